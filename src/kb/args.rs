//! The arguments of the KB tools, shared by the MCP tools and the tools
//! agents call (one definition, so both take exactly the same arguments).

use schemars::JsonSchema;
use serde::Deserialize;

use super::{ListOptions, SearchQuery, WriteMode};

/// Arguments of `kb_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KbReadArgs {
    /// KB-relative file path, e.g. `outbox/code-review-42.md`.
    pub path: String,
    /// Byte offset to start at (from a previous call's `next_offset`); default 0.
    pub offset: Option<u64>,
    /// Most bytes to return; default 262144, at most 1048576.
    pub limit: Option<u64>,
}

/// Arguments of `kb_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KbWriteArgs {
    /// KB-relative file path, e.g. `context/architecture.md`.
    pub path: String,
    /// The text to write (UTF-8).
    pub content: String,
    /// `overwrite` (default), `append`, or `create_new`.
    #[serde(default)]
    pub mode: WriteMode,
}

/// Arguments of `kb_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KbListArgs {
    /// KB-relative folder (or file); omit for the root.
    pub path: Option<String>,
    /// Descend into sub-folders.
    #[serde(default)]
    pub recursive: bool,
    /// Most entries to return; default 1000, at most 10000.
    pub limit: Option<usize>,
    /// Include dot-files.
    #[serde(default)]
    pub include_hidden: bool,
}

/// Arguments of `kb_search`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KbSearchArgs {
    /// Text to find; a regular expression (Rust syntax) when `regex` is true.
    pub query: String,
    /// Treat `query` as a regular expression.
    #[serde(default)]
    pub regex: bool,
    /// Ignore letter case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Only search this KB-relative folder or file.
    pub path: Option<String>,
    /// Only search files matching this glob, e.g. `*.md` or `outbox/**`.
    pub glob: Option<String>,
    /// Most matches to return; default 100, at most 1000.
    pub max_results: Option<usize>,
}

impl KbListArgs {
    /// The listing options these arguments ask for.
    pub fn options(&self) -> ListOptions {
        ListOptions {
            recursive: self.recursive,
            limit: self.limit.unwrap_or(super::DEFAULT_LIST_LIMIT),
            include_hidden: self.include_hidden,
        }
    }
}

impl From<KbSearchArgs> for SearchQuery {
    fn from(a: KbSearchArgs) -> SearchQuery {
        SearchQuery {
            pattern: a.query,
            regex: a.regex,
            case_insensitive: a.case_insensitive,
            path: a.path,
            glob: a.glob,
            max_results: a.max_results.unwrap_or(super::DEFAULT_MAX_RESULTS),
        }
    }
}
