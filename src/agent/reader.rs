//! The agent file reader: YAML front matter plus a markdown body.
//!
//! One reader accepts four dialects unchanged: `dispatch`'s own keys, the
//! TypeScript prototype's (`model: {id, provider, params}`, `maxRetries`, ...),
//! VS Code custom agents and Claude Code subagents. Keys that `dispatch` does not
//! use are kept in [`Agent::extra`] and reported as warnings, never errors, so a
//! file written for another tool still loads. Every problem carries the file,
//! line and column of the key it is about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use pulldown_cmark::{Event, Parser, Tag, TagEnd};
use serde_yaml::Value;

use super::{Agent, AuditPolicy, ModelRef, ModelSpec, Routing, SourceFormat, limits, parse_model};
use crate::diag::Diagnostic;

/// The file suffix that marks an agent file.
pub const AGENT_SUFFIX: &str = ".agent.md";

/// What the reader needs to know about the world outside the file.
#[derive(Debug, Clone)]
pub struct ReadContext {
    /// Provider names a model may start with (built-ins plus configured ones).
    pub known_providers: BTreeSet<String>,
    /// Model aliases (`sonnet`, `inherit`, ...) and the `provider/model-id`
    /// each stands for.
    pub aliases: BTreeMap<String, String>,
}

impl Default for ReadContext {
    fn default() -> Self {
        ReadContext {
            known_providers: super::BUILTIN_PROVIDERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            aliases: crate::config::DEFAULT_MODEL_ALIASES
                .iter()
                .map(|(a, m)| (a.to_string(), m.to_string()))
                .collect(),
        }
    }
}

/// The outcome of reading one file: an agent when there were no errors, and
/// every diagnostic found either way.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The agent, if the file had no errors.
    pub agent: Option<Agent>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

/// Keys `dispatch` itself understands (used for "did you mean" hints).
const OUR_KEYS: &[&str] = &[
    "name",
    "description",
    "model",
    "temperature",
    "max_tokens",
    "mirror",
    "max_retries",
    "max_turns",
    "escalate",
    "timeout",
    "tools",
    "routing",
    "audit",
    "dag",
];

/// Keys of the prototype that `dispatch` keeps but does not act on.
const PROTOTYPE_KEYS: &[&str] = &["permissions", "trigger"];
/// Keys of VS Code custom agents that `dispatch` keeps but does not act on.
const VSCODE_KEYS: &[&str] = &[
    "argument-hint",
    "handoffs",
    "target",
    "infer",
    "mcp-servers",
    "user-invokable",
    "disable-model-invocation",
];
/// Keys of Claude Code subagents that `dispatch` keeps but does not act on.
const CLAUDE_KEYS: &[&str] = &[
    "color",
    "permissionMode",
    "skills",
    "hooks",
    "disallowedTools",
];

/// Tool names agents may be given (slash forms are accepted too).
const DISPATCH_TOOLS: &[&str] = &[
    "file_read",
    "file_list",
    "file_search",
    "kb_read",
    "kb_write",
    "kb_list",
    "kb_search",
    "agent_list",
    "agent_run",
    "agent_delegate",
    "task_status",
    "task_result",
    "task_list",
    "task_cancel",
    "workflow_run",
    "workflow_status",
    "usage_report",
];

/// `NAME/*` or `NAME/tool` where NAME is not one of dispatch's own tool
/// families (`kb/read` is the prototype's name for `kb_read`).
fn is_server_tool(t: &str) -> bool {
    let Some((server, tool)) = t.split_once('/') else {
        return false;
    };
    !server.is_empty()
        && !tool.is_empty()
        && !DISPATCH_TOOLS.contains(&t.replace('/', "_").as_str())
        && server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The tools an agent's model may call (the rest of [`DISPATCH_TOOLS`] are
/// for MCP clients); other MCP servers' tools come as `NAME/tool`.
const AGENT_TOOLS: &[&str] = &[
    "kb_read",
    "kb_list",
    "kb_search",
    "kb_write",
    "file_read",
    "file_list",
    "file_search",
    "agent_run",
];

/// The largest agent file read; a larger one is a diagnostic.
pub const MAX_AGENT_FILE_BYTES: u64 = 1024 * 1024;

/// Open `path` for reading without ever blocking: a FIFO opened without
/// `O_NONBLOCK` waits for a writer; a regular file ignores the flag. The
/// opened file (not the path) must be a regular file.
fn open_regular(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err(
            "not a regular file (a device, FIFO or socket): agent files must be plain files"
                .to_string(),
        );
    }
    if meta.len() > MAX_AGENT_FILE_BYTES {
        return Err(format!(
            "the file is {} bytes; agent files may have at most {MAX_AGENT_FILE_BYTES}",
            meta.len()
        ));
    }
    Ok(file)
}

/// At most [`MAX_AGENT_FILE_BYTES`] of `path`, which must be a regular file.
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_AGENT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > MAX_AGENT_FILE_BYTES {
        return Err(format!(
            "the file grew past {MAX_AGENT_FILE_BYTES} bytes while it was read; agent files may have at most that"
        ));
    }
    Ok(bytes)
}

/// True when `path` starts with a front matter line (`---`, after an
/// optional BOM), or cannot be judged (the reader then says why).
pub fn starts_with_front_matter(path: &Path) -> bool {
    use std::io::Read;
    let Ok(file) = open_regular(path) else {
        return true;
    };
    let mut head = Vec::with_capacity(8);
    if file.take(8).read_to_end(&mut head).is_err() {
        return true;
    }
    let head = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&head);
    head.starts_with(b"---")
}

/// Read and parse `path`; diagnostics name the file as `shown_as`. Only
/// regular files up to [`MAX_AGENT_FILE_BYTES`] are read, and reading never
/// blocks.
pub fn read_agent_file(path: &Path, shown_as: &Path, ctx: &ReadContext) -> FileReport {
    match read_limited(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_agent(&text, shown_as, ctx),
            Err(e) => {
                let (line, col) = line_col(&e.as_bytes()[..e.utf8_error().valid_up_to()]);
                FileReport {
                    agent: None,
                    diagnostics: vec![Diagnostic::error(
                        shown_as,
                        line,
                        col,
                        "file is not valid UTF-8: save it as UTF-8",
                    )],
                }
            }
        },
        Err(message) => FileReport {
            agent: None,
            diagnostics: vec![Diagnostic::error(shown_as, 1, 1, message)],
        },
    }
}

fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

/// The agent name a file gets when it does not say: its name without `.agent.md`.
pub fn default_name(file: &Path) -> String {
    let file_name = file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    file_name
        .strip_suffix(AGENT_SUFFIX)
        .or_else(|| file_name.strip_suffix(".md"))
        .unwrap_or(&file_name)
        .to_string()
}

/// Split a file into (YAML text, line number of its first line, body). Also
/// normalises a BOM and CRLF line endings.
struct Split {
    yaml: Option<String>,
    yaml_first_line: usize,
    body: String,
}

fn split_front_matter(text: &str, file: &Path) -> Result<Split, Diagnostic> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.replace("\r\n", "\n");
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end() != "---" {
        return Ok(Split {
            yaml: None,
            yaml_first_line: 1,
            body: text,
        });
    }
    let mut yaml = String::new();
    let mut consumed = first.len();
    for line in lines {
        consumed += line.len();
        let t = line.trim_end();
        if t == "---" || t == "..." {
            return Ok(Split {
                yaml: Some(yaml),
                yaml_first_line: 2,
                body: text[consumed..].to_string(),
            });
        }
        yaml.push_str(line);
    }
    Err(Diagnostic::error(
        file,
        1,
        1,
        "front matter opened here is never closed: add a line `---` after the YAML keys",
    ))
}

/// Top-level keys of a YAML mapping and where they are, found by scanning the
/// text (serde_yaml's `Value` keeps no positions).
fn key_positions(yaml: &str, first_line: usize) -> HashMap<String, (usize, usize)> {
    let mut out = HashMap::new();
    for (i, line) in yaml.lines().enumerate() {
        let Some(c) = line.chars().next() else {
            continue;
        };
        if c.is_whitespace() || c == '#' || c == '-' {
            continue;
        }
        if let Some((key, _)) = line.split_once(':') {
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            out.entry(key.to_string()).or_insert((first_line + i, 1));
        }
    }
    out
}

/// Parse an agent file's text. `file` is only used in diagnostics and as the
/// source of the default name.
pub fn parse_agent(text: &str, file: &Path, ctx: &ReadContext) -> FileReport {
    let split = match split_front_matter(text, file) {
        Ok(s) => s,
        Err(d) => {
            return FileReport {
                agent: None,
                diagnostics: vec![d],
            };
        }
    };
    let mut p = FileParser {
        file,
        ctx,
        diags: Vec::new(),
        positions: HashMap::new(),
        yaml_first_line: split.yaml_first_line,
    };
    let map = match &split.yaml {
        None => {
            p.diags.push(Diagnostic::warning(
                file,
                1,
                1,
                "no front matter: the whole file is the system prompt and the agent has no model; \
                 start the file with `---`, `model: provider/model-id`, `---`",
            ));
            serde_yaml::Mapping::new()
        }
        Some(yaml) => match parse_yaml(yaml, split.yaml_first_line, file) {
            Ok(m) => {
                p.positions = key_positions(yaml, split.yaml_first_line);
                m
            }
            Err(d) => {
                return FileReport {
                    agent: None,
                    diagnostics: vec![d],
                };
            }
        },
    };
    let agent = p.build(map, split.body);
    let has_error = p.diags.iter().any(Diagnostic::is_error);
    FileReport {
        agent: if has_error { None } else { agent },
        diagnostics: p.diags,
    }
}

fn parse_yaml(
    yaml: &str,
    first_line: usize,
    file: &Path,
) -> Result<serde_yaml::Mapping, Diagnostic> {
    if yaml.trim().is_empty() {
        return Ok(serde_yaml::Mapping::new());
    }
    match serde_yaml::from_str::<Value>(yaml) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(serde_yaml::Mapping::new()),
        Ok(_) => Err(Diagnostic::error(
            file,
            first_line,
            1,
            "front matter must be YAML `key: value` lines",
        )),
        Err(e) => {
            let (line, col) = e
                .location()
                .map(|l| (l.line() + first_line - 1, l.column()))
                .unwrap_or((first_line, 1));
            // serde_yaml appends " at line X column Y" relative to the YAML block;
            // we give the file position ourselves.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            Err(Diagnostic::error(
                file,
                line,
                col,
                format!("invalid YAML: {msg}"),
            ))
        }
    }
}

struct FileParser<'a> {
    file: &'a Path,
    ctx: &'a ReadContext,
    diags: Vec<Diagnostic>,
    positions: HashMap<String, (usize, usize)>,
    yaml_first_line: usize,
}

impl FileParser<'_> {
    fn pos(&self, key: &str) -> (usize, usize) {
        self.positions
            .get(key)
            .copied()
            .unwrap_or((self.yaml_first_line, 1))
    }

    fn error(&mut self, key: &str, msg: impl Into<String>) {
        let (l, c) = self.pos(key);
        self.diags.push(Diagnostic::error(self.file, l, c, msg));
    }

    fn warn(&mut self, key: &str, msg: impl Into<String>) {
        let (l, c) = self.pos(key);
        self.diags.push(Diagnostic::warning(self.file, l, c, msg));
    }

    fn build(&mut self, map: serde_yaml::Mapping, body: String) -> Option<Agent> {
        let mut agent = Agent {
            name: default_name(self.file),
            description: String::new(),
            models: Vec::new(),
            temperature: None,
            max_tokens: None,
            mirror: None,
            max_retries: limits::DEFAULT_MAX_RETRIES,
            max_turns: None,
            escalate: None,
            timeout: None,
            tools: Vec::new(),
            routing: Routing::default(),
            audit: None,
            dag: None,
            system_prompt: body.trim().to_string(),
            source: self.file.to_path_buf(),
            format: SourceFormat::Dispatch,
            extra: BTreeMap::new(),
            positions: self
                .positions
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        let mut has_model_key = false;
        for (k, v) in map {
            let Some(key) = k.as_str().map(str::to_string) else {
                self.diags.push(Diagnostic::error(
                    self.file,
                    self.yaml_first_line,
                    1,
                    format!("front matter key {} is not a string", yaml_brief(&k)),
                ));
                continue;
            };
            match key.as_str() {
                "name" => {
                    if let Some(s) = self.string(&key, &v) {
                        if valid_name(&s) {
                            agent.name = s;
                        } else {
                            self.error(
                                &key,
                                format!(
                                    "name `{s}` is not valid: use letters, digits, `-`, `_` or `.`, \
                                     starting with a letter or digit, at most 64 characters"
                                ),
                            );
                        }
                    }
                }
                "description" => {
                    if let Some(s) = self.string(&key, &v) {
                        agent.description = s.trim().to_string();
                    }
                }
                "model" | "models" => {
                    has_model_key = true;
                    self.models(&key, &v, &mut agent);
                }
                "temperature" => agent.temperature = self.temperature(&key, &v),
                "max_tokens" | "maxTokens" => {
                    agent.max_tokens = self
                        .bounded_int(&key, &v, 1, limits::MAX_TOKENS)
                        .map(|n| n as u32)
                }
                "mirror" => agent.mirror = self.mirror(&key, &v),
                "max_retries" | "maxRetries" => {
                    if key == "maxRetries" {
                        agent.format = SourceFormat::Prototype;
                    }
                    if let Some(n) = self.bounded_int(&key, &v, 0, limits::MAX_RETRIES) {
                        agent.max_retries = n as u32;
                    }
                }
                "max_turns" | "maxTurns" => {
                    agent.max_turns = self
                        .bounded_int(&key, &v, 1, limits::MAX_TURNS)
                        .map(|n| n as u32)
                }
                "escalate" => {
                    if let Some(s) = self.string(&key, &v) {
                        agent.escalate = self.one_model(&key, &s);
                    }
                }
                "timeout" => agent.timeout = self.timeout(&key, &v, false),
                "timeout_ms" | "timeoutMs" => agent.timeout = self.timeout(&key, &v, true),
                "tools" => agent.tools = self.tools(&key, &v, &mut agent.format),
                "routing" => agent.routing = self.routing(&key, &v),
                "audit" => agent.audit = self.audit(&key, &v),
                "dag" => match serde_json::to_value(&v) {
                    Ok(j) => agent.dag = Some(j),
                    Err(e) => self.error(&key, format!("`dag` cannot be represented as JSON: {e}")),
                },
                other => {
                    let dialect = if PROTOTYPE_KEYS.contains(&other) {
                        agent.format = SourceFormat::Prototype;
                        Some("the prototype")
                    } else if VSCODE_KEYS.contains(&other) {
                        agent.format = SourceFormat::VsCode;
                        Some("VS Code")
                    } else if CLAUDE_KEYS.contains(&other) {
                        agent.format = SourceFormat::ClaudeCode;
                        Some("Claude Code")
                    } else {
                        None
                    };
                    let msg = match dialect {
                        Some(d) => format!("`{other}` ({d}) is kept but not used by dispatch"),
                        None => match suggest(other) {
                            Some(s) => format!(
                                "unknown key `{other}` is kept but ignored; did you mean `{s}`?"
                            ),
                            None => format!("unknown key `{other}` is kept but ignored"),
                        },
                    };
                    self.warn(&key, msg);
                    match serde_json::to_value(&v) {
                        Ok(j) => {
                            agent.extra.insert(key, j);
                        }
                        Err(e) => self.warn(&key, format!("value cannot be kept: {e}")),
                    }
                }
            }
        }
        if agent.description.is_empty() {
            agent.description = first_paragraph(&agent.system_prompt);
        }
        if agent.models.is_empty() && agent.dag.is_none() && has_model_key {
            self.warn(
                "model",
                "no model that dispatch can call: add `model: provider/model-id` to run this agent",
            );
        }
        if agent.system_prompt.is_empty() && agent.dag.is_none() {
            self.diags.push(Diagnostic::warning(
                self.file,
                1,
                1,
                "the body is empty: the markdown after the front matter is the agent's system prompt",
            ));
        }
        Some(agent)
    }

    fn string(&mut self, key: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    key,
                    format!("`{key}` must be a string, found {}", yaml_kind(other)),
                );
                None
            }
        }
    }

    fn temperature(&mut self, key: &str, v: &Value) -> Option<f64> {
        match v.as_f64() {
            Some(t) if (0.0..=limits::MAX_TEMPERATURE).contains(&t) => Some(t),
            Some(t) => {
                self.error(
                    key,
                    format!("temperature {t} is out of range: use 0.0 to 2.0"),
                );
                None
            }
            None => {
                self.error(
                    key,
                    format!(
                        "`{key}` must be a number from 0.0 to 2.0, found {}",
                        yaml_kind(v)
                    ),
                );
                None
            }
        }
    }

    fn bounded_int(&mut self, key: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.error(
                    key,
                    format!("`{key}` is {n}: use a whole number from {min} to {max}"),
                );
                None
            }
            None => {
                self.error(
                    key,
                    format!(
                        "`{key}` must be a whole number from {min} to {max}, found {}",
                        yaml_brief(v)
                    ),
                );
                None
            }
        }
    }

    fn timeout(&mut self, key: &str, v: &Value, millis: bool) -> Option<Duration> {
        let d = match v {
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => {
                    Some(Duration::from_secs_f64(if millis { x / 1000.0 } else { x }))
                }
                _ => None,
            },
            Value::String(s) if !millis => humantime::parse_duration(s.trim()).ok(),
            _ => None,
        };
        let Some(d) = d else {
            self.error(
                key,
                format!(
                    "`{key}` must be a duration such as `120s` or `2m` (or a number of {}), found {}",
                    if millis { "milliseconds" } else { "seconds" },
                    yaml_brief(v)
                ),
            );
            return None;
        };
        let secs = d.as_secs_f64();
        if secs < limits::MIN_TIMEOUT_SECS as f64 || secs > limits::MAX_TIMEOUT_SECS as f64 {
            self.error(
                key,
                format!(
                    "timeout {} is out of range: use 1s to 1h",
                    humantime::format_duration(d)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn mirror(&mut self, key: &str, v: &Value) -> Option<String> {
        let name = match v {
            Value::Null => return None,
            Value::String(s) => s.trim().to_string(),
            Value::Mapping(m) => match m.get("agent").or_else(|| m.get("name")) {
                Some(Value::String(s)) => s.trim().to_string(),
                _ => {
                    self.error(
                        key,
                        "`mirror` must name an auditor agent: `mirror: code-review-auditor`",
                    );
                    return None;
                }
            },
            other => {
                self.error(
                    key,
                    format!("`mirror` must be an agent name, found {}", yaml_kind(other)),
                );
                return None;
            }
        };
        if name.is_empty() {
            return None;
        }
        if !valid_name(&name) {
            self.error(key, format!("mirror `{name}` is not a valid agent name"));
            return None;
        }
        Some(name)
    }

    fn models(&mut self, key: &str, v: &Value, agent: &mut Agent) {
        match v {
            Value::Null => {}
            Value::String(s) => {
                if let Some(m) = self.one_model(key, s) {
                    agent.models.push(m);
                }
            }
            Value::Sequence(items) => {
                for item in items {
                    match item {
                        Value::String(s) => {
                            if let Some(m) = self.one_model(key, s) {
                                agent.models.push(m);
                            }
                        }
                        Value::Mapping(_) => self.prototype_model(key, item, agent),
                        other => self.error(
                            key,
                            format!(
                                "each model in the list must be a string, found {}",
                                yaml_kind(other)
                            ),
                        ),
                    }
                }
            }
            Value::Mapping(_) => self.prototype_model(key, v, agent),
            other => self.error(
                key,
                format!(
                    "`model` must be `provider/model-id` or a list of them, found {}",
                    yaml_kind(other)
                ),
            ),
        }
        let mut seen = BTreeSet::new();
        let before = agent.models.len();
        agent.models.retain(|m| seen.insert(m.clone()));
        if agent.models.len() != before {
            self.warn(
                key,
                "the model chain names a model twice; the repeat is dropped",
            );
        }
    }

    /// The prototype's `model: {id, provider, params: {temperature, maxTokens}}`.
    fn prototype_model(&mut self, key: &str, v: &Value, agent: &mut Agent) {
        agent.format = SourceFormat::Prototype;
        let id = v
            .get("id")
            .or_else(|| v.get("name"))
            .and_then(Value::as_str);
        let Some(id) = id else {
            self.error(
                key,
                "`model` as a mapping needs `id` (and optionally `provider`, `params`)",
            );
            return;
        };
        let provider = v.get("provider").and_then(Value::as_str).map(str::trim);
        let full = match provider {
            Some(p) if !p.is_empty() && !id.starts_with(&format!("{p}/")) => format!("{p}/{id}"),
            _ => id.to_string(),
        };
        if let Some(m) = self.one_model(key, &full) {
            agent.models.push(m);
        }
        if let Some(params) = v.get("params") {
            if agent.temperature.is_none()
                && let Some(t) = params.get("temperature")
            {
                agent.temperature = self.temperature(key, t);
            }
            if agent.max_tokens.is_none()
                && let Some(t) = params.get("max_tokens").or_else(|| params.get("maxTokens"))
            {
                agent.max_tokens = self
                    .bounded_int(key, t, 1, limits::MAX_TOKENS)
                    .map(|n| n as u32);
            }
        }
    }

    fn one_model(&mut self, key: &str, raw: &str) -> Option<ModelRef> {
        if let Some(target) = self.ctx.aliases.get(raw.trim()) {
            let alias = raw.trim().to_string();
            let model = match parse_model(target) {
                Ok(ModelSpec::Ref(m)) if self.ctx.known_providers.contains(&m.provider) => m,
                _ => {
                    self.error(
                        key,
                        format!("model alias `{alias}` stands for `{target}`, which is not a `provider/model-id` dispatch can call; fix [model_aliases] in dispatch.toml"),
                    );
                    return None;
                }
            };
            self.warn(
                key,
                format!(
                    "model alias `{alias}` is read as `{model}` (change it under [model_aliases] in dispatch.toml)"
                ),
            );
            return Some(model);
        }
        match parse_model(raw) {
            Ok(ModelSpec::Ref(m)) => {
                if self.ctx.known_providers.contains(&m.provider) {
                    Some(m)
                } else {
                    let known: Vec<&str> = self
                        .ctx
                        .known_providers
                        .iter()
                        .map(String::as_str)
                        .collect();
                    self.error(
                        key,
                        format!(
                            "unknown provider `{}` in `{m}`: use one of {}, or declare [providers.{}] in dispatch.toml",
                            m.provider,
                            known.join(", "),
                            m.provider
                        ),
                    );
                    None
                }
            }
            Ok(ModelSpec::Foreign(name)) => {
                self.warn(
                    key,
                    format!(
                        "`{name}` is another tool's display name, not `provider/model-id`; dispatch cannot call it"
                    ),
                );
                None
            }
            Err(msg) => {
                self.error(key, msg);
                None
            }
        }
    }

    fn tools(&mut self, key: &str, v: &Value, format: &mut SourceFormat) -> Vec<String> {
        let raw: Vec<String> = match v {
            Value::Null => Vec::new(),
            Value::String(s) => {
                if *format == SourceFormat::Dispatch {
                    *format = SourceFormat::ClaudeCode;
                }
                s.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            }
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                        _ => self.error(
                            key,
                            format!("each tool must be a name, found {}", yaml_brief(item)),
                        ),
                    }
                }
                out
            }
            other => {
                self.error(
                    key,
                    format!(
                        "`tools` must be a list or a comma-separated string, found {}",
                        yaml_kind(other)
                    ),
                );
                Vec::new()
            }
        };
        let mut out = Vec::new();
        let mut foreign = Vec::new();
        let mut client_only = Vec::new();
        for t in raw {
            let canonical = t.replace('/', "_");
            if is_server_tool(&t) {
                // `NAME/*` or `NAME/tool`: a tool of an `[mcp_servers.NAME]`,
                // checked against the config when the agent runs.
                out.push(t);
            } else if DISPATCH_TOOLS.contains(&canonical.as_str()) {
                if !AGENT_TOOLS.contains(&canonical.as_str()) {
                    client_only.push(canonical.clone());
                }
                if !out.contains(&canonical) {
                    out.push(canonical);
                }
            } else {
                foreign.push(t.clone());
                out.push(t);
            }
        }
        if !client_only.is_empty() {
            self.warn(
                key,
                format!(
                    "tools for MCP clients, not offered to agents (an agent may call {}): {}",
                    AGENT_TOOLS.join(", "),
                    client_only.join(", ")
                ),
            );
        }
        if !foreign.is_empty() {
            self.warn(
                key,
                format!(
                    "not dispatch tools, kept but not offered to the model: {}",
                    foreign.join(", ")
                ),
            );
        }
        out
    }

    fn routing(&mut self, key: &str, v: &Value) -> Routing {
        let mut r = Routing::default();
        let Value::Mapping(m) = v else {
            if !v.is_null() {
                self.error(
                    key,
                    "`routing` must be a mapping: `routing: {keywords: [review, diff]}`",
                );
            }
            return r;
        };
        for (k, val) in m {
            match k.as_str() {
                Some("keywords") => r.keywords = self.string_list(key, "routing.keywords", val),
                Some("patterns") => {
                    for p in self.string_list(key, "routing.patterns", val) {
                        // Parsing (not compiling) is enough to validate, and keeps
                        // start-up fast with many agents; the router compiles later.
                        match regex_syntax::Parser::new().parse(&p) {
                            Ok(_) => r.patterns.push(p),
                            Err(e) => self.error(
                                key,
                                format!(
                                    "routing pattern `{p}` is not a valid regex: {}",
                                    one_line(&e.to_string())
                                ),
                            ),
                        }
                    }
                }
                _ => self.warn(
                    key,
                    format!(
                        "unknown routing key {}: use `keywords` or `patterns`",
                        yaml_brief(k)
                    ),
                ),
            }
        }
        r
    }

    fn string_list(&mut self, key: &str, what: &str, v: &Value) -> Vec<String> {
        match v {
            Value::String(s) => s
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => {
                        self.error(
                            key,
                            format!("`{what}` must list strings, found {}", yaml_kind(i)),
                        );
                        None
                    }
                })
                .collect(),
            other => {
                self.error(
                    key,
                    format!(
                        "`{what}` must be a list of strings, found {}",
                        yaml_kind(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    fn audit(&mut self, key: &str, v: &Value) -> Option<AuditPolicy> {
        let Value::Mapping(m) = v else {
            if !v.is_null() {
                self.error(key, "`audit` must be a mapping: `audit: {rate: 0.5, min_rate: 0.1, adaptive: true}`");
            }
            return None;
        };
        let mut a = AuditPolicy::default();
        let mut min_given = false;
        for (k, val) in m {
            match k.as_str() {
                Some("rate") => match val.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => a.rate = x,
                    _ => self.error(
                        key,
                        format!(
                            "`audit.rate` must be a number from 0.0 to 1.0, found {}",
                            yaml_brief(val)
                        ),
                    ),
                },
                Some("min_rate" | "minRate") => match val.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => {
                        a.min_rate = x;
                        min_given = true;
                    }
                    _ => self.error(
                        key,
                        format!(
                            "`audit.min_rate` must be a number from 0.0 to 1.0, found {}",
                            yaml_brief(val)
                        ),
                    ),
                },
                Some("adaptive") => match val.as_bool() {
                    Some(b) => a.adaptive = b,
                    None => self.error(
                        key,
                        format!(
                            "`audit.adaptive` must be true or false, found {}",
                            yaml_brief(val)
                        ),
                    ),
                },
                _ => self.warn(
                    key,
                    format!(
                        "unknown audit key {}: use `rate`, `min_rate`, `adaptive`",
                        yaml_brief(k)
                    ),
                ),
            }
        }
        if !min_given {
            a.min_rate = a.rate;
        }
        if a.min_rate > a.rate {
            self.error(
                key,
                format!(
                    "`audit.min_rate` ({}) is above `audit.rate` ({})",
                    a.min_rate, a.rate
                ),
            );
        }
        Some(a)
    }
}

/// Valid agent names: what can appear in a file name, a URI and a log line.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// The first paragraph of the markdown body as plain text, for a description.
pub fn first_paragraph(markdown: &str) -> String {
    let mut in_para = false;
    let mut out = String::new();
    for ev in Parser::new(markdown) {
        match ev {
            Event::Start(Tag::Paragraph) => in_para = true,
            Event::End(TagEnd::Paragraph) if in_para => break,
            Event::Text(t) | Event::Code(t) if in_para => out.push_str(&t),
            Event::SoftBreak | Event::HardBreak if in_para => out.push(' '),
            _ => {}
        }
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > 200 {
        let cut: String = out.chars().take(199).collect();
        format!("{}…", cut.trim_end())
    } else {
        out
    }
}

fn suggest(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    OUR_KEYS
        .iter()
        .copied()
        .map(|k| (levenshtein(&lower, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn yaml_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn yaml_brief(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{}`", s.chars().take(40).collect::<String>()),
        Value::Number(n) => format!("`{n}`"),
        Value::Bool(b) => format!("`{b}`"),
        other => yaml_kind(other).to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
