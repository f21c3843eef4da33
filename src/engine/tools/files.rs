//! The project's files, read-only, for agents: `file_read`, `file_list`,
//! `file_search`.
//!
//! Every file is opened beneath a directory handle on the project root
//! (cap-std: `openat2(RESOLVE_BENEATH)` on Linux), so `..` or a link
//! leading out fails in the kernel. Hidden names (`.env`, `.git`,
//! `.dispatch`, ...) are refused outright, and so is whatever `.gitignore`
//! files (the root's and each folder's on the way down) ignore: build
//! output, secrets kept out of git. Walks use ripgrep's `ignore` crate,
//! which applies the same rules and does not follow links.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use ignore::WalkBuilder;
use ignore::gitignore::GitignoreBuilder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Builtin, ToolOutput, json_text, parse};

/// Most bytes one `file_read` returns by default, and at most.
const DEFAULT_READ: u64 = 64 * 1024;
const MAX_READ: u64 = 1024 * 1024;
/// Largest file `file_search` looks into.
const MAX_SEARCH_FILE: u64 = 2 * 1024 * 1024;

/// Arguments of `file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileReadArgs {
    /// Path relative to the project root, e.g. `src/main.rs`.
    pub path: String,
    /// Byte offset to start at (a previous call's `next_offset`); default 0.
    pub offset: Option<u64>,
    /// Most bytes to return; default 65536, at most 1048576.
    pub limit: Option<u64>,
}

/// Arguments of `file_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileListArgs {
    /// Folder relative to the project root; omit for the root.
    pub path: Option<String>,
    /// Descend into sub-folders.
    #[serde(default)]
    pub recursive: bool,
    /// Most entries; default 500, at most 5000.
    pub limit: Option<usize>,
}

/// Arguments of `file_search`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSearchArgs {
    /// Text to find; a regular expression (Rust syntax) when `regex` is true.
    pub pattern: String,
    /// Only search under this folder or file, relative to the project root.
    pub path: Option<String>,
    /// Treat `pattern` as a regular expression.
    #[serde(default)]
    pub regex: bool,
    /// Ignore letter case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Most matches; default 100, at most 1000.
    pub max_results: Option<usize>,
}

#[derive(Serialize)]
struct FileChunk {
    path: String,
    content: String,
    size: u64,
    next_offset: u64,
    eof: bool,
}

#[derive(Serialize)]
struct FileEntry {
    path: String,
    kind: &'static str,
    size: u64,
}

#[derive(Serialize)]
struct FileListing {
    entries: Vec<FileEntry>,
    truncated: bool,
}

#[derive(Serialize)]
struct FileMatch {
    path: String,
    line: u64,
    text: String,
}

#[derive(Serialize)]
struct FileMatches {
    matches: Vec<FileMatch>,
    truncated: bool,
}

/// The project root, opened once.
#[derive(Debug)]
pub struct ProjectFiles {
    root: PathBuf,
    dir: Dir,
}

impl ProjectFiles {
    /// Opens the project root.
    pub fn open(root: &Path) -> std::io::Result<ProjectFiles> {
        Ok(ProjectFiles {
            dir: Dir::open_ambient_dir(root, ambient_authority())?,
            root: root.to_path_buf(),
        })
    }

    /// Open `rel` for reading beneath the root without blocking (a FIFO
    /// would hold the thread until a writer came), checked to be a regular
    /// file once open.
    fn open_regular(&self, rel: &Path) -> std::io::Result<Option<(std::fs::File, u64)>> {
        use cap_std::fs::OpenOptionsExt;
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).custom_flags(libc::O_NONBLOCK);
        let file = self.dir.open_with(rel, &opts)?.into_std();
        let meta = file.metadata()?;
        Ok(meta.is_file().then_some((file, meta.len())))
    }

    pub(super) fn run(&self, b: Builtin, args: Value) -> Result<ToolOutput, ToolOutput> {
        let name = b.name();
        match b {
            Builtin::FileRead => self.read(parse(name, args)?),
            Builtin::FileList => self.list(parse(name, args)?),
            _ => self.search(parse(name, args)?),
        }
    }

    /// A path the tools may touch, checked by its words: relative, no `..`,
    /// nothing hidden, not ignored. (Whether it stays beneath the root once
    /// links are followed is the kernel's check, when it is opened.)
    fn checked(&self, path: &str) -> Result<PathBuf, ToolOutput> {
        let p = Path::new(path.trim_start_matches("./"));
        let mut clean = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(s) => {
                    let s = s.to_string_lossy();
                    if s.starts_with('.') {
                        return Err(ToolOutput::error(format!(
                            "`{path}`: hidden files and folders (.env, .git, .dispatch, ...) are not available to agents"
                        )));
                    }
                    clean.push(&*s);
                }
                Component::CurDir => {}
                _ => {
                    return Err(ToolOutput::error(format!(
                        "`{path}`: give a path relative to the project root, without `..`"
                    )));
                }
            }
        }
        if self.ignored(&clean) {
            return Err(ToolOutput::error(format!(
                "`{path}` is ignored by .gitignore, so it is not available to agents"
            )));
        }
        Ok(clean)
    }

    /// Whether a `.gitignore` on the way from the root down ignores `rel`
    /// (or a folder above it).
    fn ignored(&self, rel: &Path) -> bool {
        let parts: Vec<_> = rel.components().collect();
        let mut folder = self.root.clone();
        for depth in 0..parts.len() {
            let gi = folder.join(".gitignore");
            if gi.is_file() {
                let mut b = GitignoreBuilder::new(&folder);
                b.add(&gi);
                if let Ok(m) = b.build() {
                    let mut sub = folder.clone();
                    for (i, part) in parts.iter().enumerate().skip(depth) {
                        sub.push(part);
                        let is_dir = i + 1 < parts.len();
                        if m.matched(&sub, is_dir).is_ignore() {
                            return true;
                        }
                    }
                }
            }
            folder.push(parts[depth]);
        }
        false
    }

    fn read(&self, a: FileReadArgs) -> Result<ToolOutput, ToolOutput> {
        let rel = self.checked(&a.path)?;
        let failed = |e: std::io::Error| ToolOutput::error(format!("file_read `{}`: {e}", a.path));
        let Some((mut f, size)) = self.open_regular(&rel).map_err(failed)? else {
            return Err(ToolOutput::error(format!(
                "`{}` is not a regular file: use file_list for folders",
                a.path
            )));
        };
        let offset = a.offset.unwrap_or(0).min(size);
        let limit = a.limit.unwrap_or(DEFAULT_READ).clamp(1, MAX_READ);
        let mut buf = Vec::new();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(failed)?;
        (&mut f).take(limit).read_to_end(&mut buf).map_err(failed)?;
        // Never split a character: stop before an incomplete one at the end.
        let text = match std::str::from_utf8(&buf) {
            Ok(s) => s.to_string(),
            Err(e) if e.error_len().is_none() => {
                buf.truncate(e.valid_up_to());
                String::from_utf8_lossy(&buf).into_owned()
            }
            Err(_) => {
                return Err(ToolOutput::error(format!(
                    "`{}` is not a text file",
                    a.path
                )));
            }
        };
        let next = offset + buf.len() as u64;
        Ok(json_text(&FileChunk {
            path: a.path,
            content: text,
            size,
            next_offset: next,
            eof: next >= size,
        }))
    }

    /// The folder to walk, opened beneath the root first (a link out fails).
    fn walk_root(&self, path: Option<&str>) -> Result<PathBuf, ToolOutput> {
        let rel = match path.filter(|p| !p.is_empty() && *p != ".") {
            Some(p) => self.checked(p)?,
            None => PathBuf::new(),
        };
        if !rel.as_os_str().is_empty() {
            self.dir
                .metadata(&rel)
                .map_err(|e| ToolOutput::error(format!("`{}`: {e}", rel.display())))?;
        }
        Ok(self.root.join(rel))
    }

    fn walker(&self, start: &Path, max_depth: Option<usize>) -> ignore::Walk {
        WalkBuilder::new(start)
            .hidden(true)
            .git_ignore(true)
            .git_exclude(false)
            .git_global(false)
            .require_git(false)
            .follow_links(false)
            .max_depth(max_depth)
            .sort_by_file_name(|a, b| a.cmp(b))
            .build()
    }

    fn relative(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    fn list(&self, a: FileListArgs) -> Result<ToolOutput, ToolOutput> {
        let start = self.walk_root(a.path.as_deref())?;
        let limit = a.limit.unwrap_or(500).clamp(1, 5000);
        let mut entries = Vec::new();
        let mut truncated = false;
        let depth = if a.recursive { None } else { Some(1) };
        for dent in self.walker(&start, depth).flatten() {
            if dent.depth() == 0 {
                continue;
            }
            if entries.len() >= limit {
                truncated = true;
                break;
            }
            let ft = dent.file_type();
            let kind = match ft {
                Some(t) if t.is_dir() => "dir",
                Some(t) if t.is_symlink() => "link",
                Some(t) if t.is_file() => "file",
                _ => "other",
            };
            let size = dent.metadata().map(|m| m.len()).unwrap_or(0);
            entries.push(FileEntry {
                path: self.relative(dent.path()),
                kind,
                size: if kind == "file" { size } else { 0 },
            });
        }
        Ok(json_text(&FileListing { entries, truncated }))
    }

    fn search(&self, a: FileSearchArgs) -> Result<ToolOutput, ToolOutput> {
        let pattern = if a.regex {
            a.pattern.clone()
        } else {
            regex::escape(&a.pattern)
        };
        let re = regex::RegexBuilder::new(&pattern)
            .case_insensitive(a.case_insensitive)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ToolOutput::error(format!("file_search: bad pattern: {e}")))?;
        let start = self.walk_root(a.path.as_deref())?;
        let max = a.max_results.unwrap_or(100).clamp(1, 1000);
        let mut matches = Vec::new();
        for dent in self.walker(&start, None).flatten() {
            if !dent.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let rel = self.relative(dent.path());
            let Ok(Some((f, _))) = self.open_regular(Path::new(&rel)) else {
                continue;
            };
            let mut buf = Vec::new();
            if f.take(MAX_SEARCH_FILE).read_to_end(&mut buf).is_err() || buf.contains(&0) {
                continue;
            }
            let text = String::from_utf8_lossy(&buf);
            for (i, line) in text.lines().enumerate() {
                if re.is_match(line) {
                    if matches.len() >= max {
                        return Ok(json_text(&FileMatches {
                            matches,
                            truncated: true,
                        }));
                    }
                    matches.push(FileMatch {
                        path: rel.clone(),
                        line: i as u64 + 1,
                        text: clip_line(line),
                    });
                }
            }
        }
        Ok(json_text(&FileMatches {
            matches,
            truncated: false,
        }))
    }
}

fn clip_line(line: &str) -> String {
    let line = line.trim_end();
    if line.len() <= 300 {
        return line.to_string();
    }
    let mut end = 300;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}
