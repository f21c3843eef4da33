//! The markdown knowledge base: a folder (normally `<project>/_kb`) of notes
//! shared between the orchestrator, its agents and the user.
//!
//! This module is plain synchronous `std::fs` code; async callers run it on a
//! blocking thread. Every path it accepts is KB-relative and checked by
//! [`Kb::resolve`] before use, and every result type serialises to JSON (and
//! describes itself with a JSON schema) so MCP tools can return it as-is.

pub mod args;
mod error;
mod files;
mod list;
pub mod path;
mod read;
mod search;
mod title;
mod view;
mod write;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::KbError;
pub use files::FileSet;
pub use path::MAX_PATH_BYTES;
use path::RelPath;
pub use view::{KbView, SHARED_DIR, SUBJECTS_DIR, SharedAccess, subject_folder};

/// Sub-folders every knowledge base has: work handed in, work handed out,
/// standing context, and per-session notes.
pub const STANDARD_DIRS: [&str; 4] = ["inbox", "outbox", "context", "sessions"];

/// Bytes returned by one [`Kb::read`] when no limit is given.
pub const DEFAULT_READ_LIMIT: u64 = 256 * 1024;
/// Most bytes one [`Kb::read`] returns; larger limits are clamped to this so
/// one call cannot flood a model's context.
pub const MAX_READ_LIMIT: u64 = 1024 * 1024;
/// Largest file [`Kb::read_bytes`] returns whole (MCP resources are sent in
/// one message, base64-encoded for binaries).
pub const MAX_RESOURCE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest file [`Kb::write`] produces, appends included.
pub const MAX_WRITE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest file [`Kb::write_derived`] produces: an outbox file holds the
/// whole answer (up to the 32 MiB a provider answer may have) with its input
/// and header, however much of it a tool result shows.
pub const MAX_DERIVED_BYTES: u64 = 64 * 1024 * 1024;
/// Files larger than this are skipped by [`Kb::search`] (and counted).
pub const MAX_SEARCH_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Default and maximum number of entries in one [`Kb::list`].
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// See [`DEFAULT_LIST_LIMIT`].
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Default and maximum number of matches from one [`Kb::search`].
pub const DEFAULT_MAX_RESULTS: usize = 100;
/// See [`DEFAULT_MAX_RESULTS`].
pub const MAX_MAX_RESULTS: usize = 1000;
/// Longest search snippet, in characters (an ellipsis marks a cut).
pub const SNIPPET_MAX_CHARS: usize = 240;
/// How much of a markdown file is scanned for its title.
pub const TITLE_SCAN_BYTES: u64 = 64 * 1024;

/// An open knowledge base, rooted at a canonical folder.
///
/// Every file it reads or writes is opened relative to a handle held on the
/// root ([`cap_std::fs::Dir`]: `openat2(RESOLVE_BENEATH)` on Linux, a
/// no-follow walk elsewhere), so a folder swapped for a symbolic link while
/// dispatch runs cannot carry an operation outside, whatever a path check
/// saw a moment before; and what is checked is the file opened, not the path.
#[derive(Debug, Clone)]
pub struct Kb {
    root: PathBuf,
    dir: std::sync::Arc<cap_std::fs::Dir>,
}

impl Kb {
    /// Creates the folder and inbox/outbox/context/sessions if missing; canonicalises the root.
    ///
    /// The root is canonical so that every later containment check compares
    /// link-free paths.
    pub fn open(dir: &Path) -> Result<Kb, KbError> {
        // Error messages name the folder, never where it lives on this machine.
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "knowledge base".to_owned());
        fs::create_dir_all(dir)
            .map_err(|e| KbError::from_io(&e, "create the knowledge-base folder", &label))?;
        let root = fs::canonicalize(dir)
            .map_err(|e| KbError::from_io(&e, "open the knowledge-base folder", &label))?;
        if !root.is_dir() {
            return Err(KbError::NotADirectory { path: label });
        }
        for sub in STANDARD_DIRS {
            let p = root.join(sub);
            // A symlinked standard folder is the user's choice; only create
            // what is entirely missing.
            if fs::symlink_metadata(&p).is_err() {
                fs::create_dir_all(&p)
                    .map_err(|e| KbError::from_io(&e, "create the folder", sub))?;
            }
        }
        let dir = cap_std::fs::Dir::open_ambient_dir(&root, cap_std::ambient_authority())
            .map_err(|e| KbError::from_io(&e, "open the knowledge-base folder", &label))?;
        Ok(Kb {
            root,
            dir: std::sync::Arc::new(dir),
        })
    }

    /// The canonical root folder. Do not show it to clients.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Map a KB-relative path to an absolute path inside the root, refusing anything unsafe.
    ///
    /// `""` and `"."` mean the root. The existing part of the result is
    /// canonical (symbolic links inside the root are resolved; ones leading
    /// out are refused), the missing part is appended as given.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, KbError> {
        path::resolve_in(&self.root, &RelPath::parse(rel)?)
    }

    /// Reads a chunk of a UTF-8 text file, starting at byte `offset`.
    ///
    /// `limit` defaults to [`DEFAULT_READ_LIMIT`] (also for `Some(0)`) and is
    /// clamped to [`MAX_READ_LIMIT`]. Chunk edges are moved to character
    /// boundaries, so following `next_offset` yields every byte exactly once.
    pub fn read(&self, rel: &str, offset: u64, limit: Option<u64>) -> Result<ReadChunk, KbError> {
        read::read(self, rel, offset, limit)
    }

    /// Whole file as bytes for MCP resources, capped at MAX_RESOURCE_BYTES (error if larger).
    pub fn read_bytes(&self, rel: &str) -> Result<Vec<u8>, KbError> {
        read::read_bytes(self, rel)
    }

    /// Writes `content` to a file atomically (temp file + rename), creating
    /// parent folders as needed.
    pub fn write(
        &self,
        rel: &str,
        content: &str,
        mode: WriteMode,
    ) -> Result<WriteOutcome, KbError> {
        write::write(self, rel, content, mode, write::Origin::Client)
    }

    /// Like [`Kb::write`] (atomic, same checks) but without forcing the data to
    /// disk: for files derived from the task store (outbox, sessions), which
    /// the store can always reproduce. Saves two fsyncs per file. Files may
    /// be up to [`MAX_DERIVED_BYTES`].
    pub fn write_derived(
        &self,
        rel: &str,
        content: &str,
        mode: WriteMode,
    ) -> Result<WriteOutcome, KbError> {
        write::write(self, rel, content, mode, write::Origin::Derived)
    }

    /// Lists a folder (or describes a single file), sorted by path.
    pub fn list(&self, rel: &str, opts: &ListOptions) -> Result<Listing, KbError> {
        list::list(self, rel, opts)
    }

    /// Searches file contents line by line, ripgrep-style.
    pub fn search(&self, query: &SearchQuery) -> Result<SearchResults, KbError> {
        search::search(self, query)
    }

    /// All files (recursive, sorted by relative path, '/' separators) — used for MCP resource listing.
    ///
    /// Hidden files and symbolic links are left out, as in [`Kb::list`].
    /// Titles are not read (`title` is `None`): that would open every file.
    /// Fill in those of the entries you show with [`Kb::fill_titles`].
    pub fn all_files(&self) -> Result<Vec<Entry>, KbError> {
        self.files_under("")
    }

    /// Every file under the folder `rel`, as [`Kb::all_files`] lists them.
    fn files_under(&self, rel: &str) -> Result<Vec<Entry>, KbError> {
        let mut entries = list::walk_paths(self, rel)?;
        entries.retain(|e| e.kind == EntryKind::File);
        Ok(entries)
    }

    /// Reads the titles of the markdown files among `entries`.
    pub fn fill_titles(&self, entries: &mut [Entry]) {
        list::fill_titles(self, entries)
    }

    /// The handle on the root that every file operation goes through.
    fn dir(&self) -> &cap_std::fs::Dir {
        &self.dir
    }

    /// Opens the file at `rel` for reading, beneath the root, without
    /// blocking (a FIFO), and checks the opened file: a regular file, with
    /// its size.
    fn open_file(&self, rel: &RelPath) -> Result<(std::fs::File, u64), KbError> {
        use cap_std::fs::OpenOptionsExt;
        let shown = rel.display();
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).custom_flags(libc::O_NONBLOCK);
        let file = self
            .dir
            .open_with(rel.as_path(), &opts)
            .map_err(|e| KbError::from_io(&e, "read", &shown))?
            .into_std();
        let meta = file
            .metadata()
            .map_err(|e| KbError::from_io(&e, "read", &shown))?;
        if meta.is_dir() {
            return Err(KbError::IsDirectory { path: shown });
        }
        if !meta.is_file() {
            // A FIFO or device would block or never end.
            return Err(KbError::Io {
                action: "read",
                path: shown,
                message: "it is not a regular file".to_owned(),
            });
        }
        Ok((file, meta.len()))
    }
}

/// One chunk of a text file, as returned by [`Kb::read`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct ReadChunk {
    /// KB-relative path of the file.
    pub path: String,
    /// The text of this chunk.
    pub content: String,
    /// Byte offset where this chunk starts (moved forward to a character
    /// boundary if the requested offset fell inside a character).
    pub offset: u64,
    /// Bytes in `content`.
    pub bytes_read: u64,
    /// Size of the whole file in bytes.
    pub total_bytes: u64,
    /// Offset to pass to read the next chunk; absent at the end of the file.
    pub next_offset: Option<u64>,
    /// True when this chunk reaches the end of the file.
    pub eof: bool,
}

/// How [`Kb::write`] treats an existing file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Replace the file (or create it).
    #[default]
    Overwrite,
    /// Add to the end of the file (or create it).
    Append,
    /// Create the file; fail if it already exists.
    CreateNew,
}

/// What [`Kb::write`] did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct WriteOutcome {
    /// KB-relative path of the file written.
    pub path: String,
    /// Bytes of new content written.
    pub bytes_written: u64,
    /// Size of the file afterwards.
    pub total_bytes: u64,
    /// True if the file did not exist before.
    pub created: bool,
    /// The mode used.
    pub mode: WriteMode,
}

/// The kind of a listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (never followed when listing).
    Symlink,
}

/// One file, folder or link in a listing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct Entry {
    /// KB-relative path with `/` separators.
    pub path: String,
    /// File, folder or symbolic link.
    pub kind: EntryKind,
    /// Size in bytes for files; 0 for folders and links.
    pub size: u64,
    /// Last modification time, RFC 3339 UTC to the second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    /// For markdown files: the front-matter `title:` or the first heading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Options for [`Kb::list`].
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", default)]
pub struct ListOptions {
    /// Descend into sub-folders (symbolic links are not followed).
    pub recursive: bool,
    /// Most entries to return: default 1000 (also for 0), at most 10000.
    pub limit: usize,
    /// Include dot-files and dot-folders.
    pub include_hidden: bool,
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            recursive: false,
            limit: DEFAULT_LIST_LIMIT,
            include_hidden: false,
        }
    }
}

/// The result of [`Kb::list`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct Listing {
    /// The KB-relative path listed; empty for the root.
    pub path: String,
    /// Entries sorted by path (a folder's contents follow the folder).
    pub entries: Vec<Entry>,
    /// True if there were more entries than the limit.
    pub truncated: bool,
}

/// A search request for [`Kb::search`].
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", default)]
pub struct SearchQuery {
    /// Text to find (a regular expression if `regex` is true).
    pub pattern: String,
    /// Treat `pattern` as a regular expression rather than literal text.
    pub regex: bool,
    /// Match regardless of letter case.
    pub case_insensitive: bool,
    /// Only search this KB-relative folder or file.
    pub path: Option<String>,
    /// Only search files matching this glob, relative to the KB root (e.g. `*.md`).
    pub glob: Option<String>,
    /// Most matches to return: default 100 (also for 0), at most 1000.
    pub max_results: usize,
}

impl Default for SearchQuery {
    fn default() -> Self {
        SearchQuery {
            pattern: String::new(),
            regex: false,
            case_insensitive: false,
            path: None,
            glob: None,
            max_results: DEFAULT_MAX_RESULTS,
        }
    }
}

/// One matching line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct SearchMatch {
    /// KB-relative path of the file.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// The line, without its terminator, cut to 240 characters.
    pub snippet: String,
}

impl SearchMatch {
    /// `path:line: snippet`, the grep-style one-liner.
    pub fn display(&self) -> String {
        format!("{}:{}: {}", self.path, self.line, self.snippet)
    }
}

/// The result of [`Kb::search`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub struct SearchResults {
    /// Matches sorted by path, then line.
    pub matches: Vec<SearchMatch>,
    /// Text files searched.
    pub files_searched: u64,
    /// Files skipped as binary, too large or unreadable.
    pub files_skipped: u64,
    /// True if the search stopped at `max_results` with more matches left.
    pub truncated: bool,
}
