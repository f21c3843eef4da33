//! Full-text search over the knowledge base with ripgrep's crates.
//!
//! The walk is parallel; each worker searches whole files and only then
//! publishes their matches, so a file that turns out to be binary part-way
//! through contributes nothing. A shared counter stops every worker once more
//! than `max_results` matches are known, which both bounds the work and tells
//! us exactly whether the result was truncated.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use grep_matcher::LineTerminator;
use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkMatch};
use ignore::overrides::{Override, OverrideBuilder};
use ignore::{DirEntry, WalkBuilder, WalkState};

use super::path::{RelPath, cmp_paths, is_hidden_name, relative_display, resolve_in};
use super::{
    DEFAULT_MAX_RESULTS, Kb, KbError, MAX_MAX_RESULTS, MAX_SEARCH_FILE_BYTES, SNIPPET_MAX_CHARS,
    SearchMatch, SearchQuery, SearchResults,
};

/// Compiled-regex size caps. User patterns such as `\w{1000}{1000}` could
/// otherwise make the engine build hundreds of megabytes of automaton.
const REGEX_SIZE_LIMIT: usize = 10 * (1 << 20);
const REGEX_DFA_SIZE_LIMIT: usize = 20 * (1 << 20);

/// Longest pattern quoted back in an error message.
const MAX_QUOTED_PATTERN_CHARS: usize = 200;

/// State shared by all walker threads.
struct Shared {
    /// Matches already published; workers stop once this exceeds `cap`.
    committed: AtomicUsize,
    cap: usize,
    matches: Mutex<Vec<SearchMatch>>,
    searched: AtomicU64,
    skipped: AtomicU64,
}

impl Shared {
    fn full(&self) -> bool {
        self.committed.load(Ordering::Relaxed) > self.cap
    }
}

/// Collects one file's matches.
struct FileSink<'a> {
    shared: &'a Shared,
    lines: Vec<(u64, String)>,
    binary: bool,
}

impl Sink for FileSink<'_> {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, m: &SinkMatch<'_>) -> Result<bool, io::Error> {
        let first = m.line_number().unwrap_or(0);
        // Once more than `cap` matches are known the result is truncated and
        // further lines are not needed. The file is still read to its end
        // (at most MAX_SEARCH_FILE_BYTES) so that a NUL byte after the last
        // collected match still marks it binary and drops its matches.
        for (i, line) in m.lines().enumerate() {
            let known = self.shared.committed.load(Ordering::Relaxed) + self.lines.len();
            if known > self.shared.cap {
                break;
            }
            self.lines.push((first + i as u64, snippet(line)));
        }
        Ok(true)
    }

    fn binary_data(&mut self, _: &Searcher, _: u64) -> Result<bool, io::Error> {
        self.binary = true;
        Ok(false)
    }
}

/// The matched line without its terminator, cut to [`SNIPPET_MAX_CHARS`]
/// characters. Only a bounded prefix is decoded, so a 16 MiB minified line
/// costs no more than a short one.
fn snippet(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // 4 bytes per character at most, plus one more character to know
    // whether anything was cut.
    let head = &line[..line.len().min((SNIPPET_MAX_CHARS + 1) * 4)];
    let text = String::from_utf8_lossy(head);
    let mut out: String = text.chars().take(SNIPPET_MAX_CHARS).collect();
    if out.len() < text.len() || head.len() < line.len() {
        out.push('…');
    }
    out
}

/// Builds the line matcher: literal unless `regex`, never matching across
/// lines, CRLF-aware so `$` works on Windows-edited notes.
fn build_matcher(q: &SearchQuery) -> Result<RegexMatcher, KbError> {
    if q.pattern.is_empty() {
        return Err(KbError::EmptyPattern);
    }
    RegexMatcherBuilder::new()
        .fixed_strings(!q.regex)
        .case_insensitive(q.case_insensitive)
        // Lines are searched one by one: `^` and `$` mean line start and end.
        .multi_line(true)
        .crlf(true)
        // Binary detection stops at NUL, so a NUL could never match.
        .ban_byte(Some(0))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build(&q.pattern)
        .map_err(|e| {
            let mut pattern: String = q.pattern.chars().take(MAX_QUOTED_PATTERN_CHARS).collect();
            if pattern.len() < q.pattern.len() {
                pattern.push('…');
            }
            KbError::InvalidPattern {
                pattern,
                message: e.to_string(),
            }
        })
}

/// Compiles the optional glob, anchored at the KB root so `context/*.md`
/// means the same whatever sub-folder the search is restricted to.
fn build_glob(root: &Path, glob: Option<&str>) -> Result<Option<Override>, KbError> {
    let Some(glob) = glob.filter(|g| !g.trim().is_empty()) else {
        return Ok(None);
    };
    let invalid = |e: ignore::Error| KbError::InvalidGlob {
        glob: glob.to_owned(),
        message: e.to_string(),
    };
    let mut builder = OverrideBuilder::new(root);
    builder.add(glob).map_err(invalid)?;
    builder.build().map(Some).map_err(invalid)
}

pub(super) fn search(kb: &Kb, q: &SearchQuery) -> Result<SearchResults, KbError> {
    let matcher = build_matcher(q)?;
    let glob = build_glob(kb.root(), q.glob.as_deref())?;
    let start = match q.path.as_deref() {
        None => kb.root().to_path_buf(),
        Some(rel) => {
            let parsed = RelPath::parse(rel)?;
            // Checked through the root's handle first, as reads are (an
            // absolute link is refused there); the walk then starts at the
            // resolved path, and every file it finds is opened beneath the
            // handle again.
            kb.dir()
                .metadata(parsed.as_path())
                .map_err(|e| KbError::from_io(&e, "search", &parsed.display()))?;
            resolve_in(kb.root(), &parsed)?
        }
    };
    let cap = match q.max_results {
        0 => DEFAULT_MAX_RESULTS,
        n => n.min(MAX_MAX_RESULTS),
    };
    let searcher = SearcherBuilder::new()
        .line_number(true)
        .line_terminator(LineTerminator::crlf())
        .binary_detection(BinaryDetection::quit(b'\x00'))
        .build();

    let shared = Shared {
        committed: AtomicUsize::new(0),
        cap,
        matches: Mutex::new(Vec::new()),
        searched: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
    };

    let mut walker = WalkBuilder::new(&start);
    // The KB is usually git-ignored by the project: honour no ignore files at
    // all, but do skip dot-files (temp files, editor swap files, `.git`) and
    // never follow links (they could lead outside the root).
    walker
        .standard_filters(false)
        .hidden(true)
        .follow_links(false)
        .require_git(false);
    if let Some(ov) = &glob {
        walker.overrides(ov.clone());
    }
    walker.build_parallel().run(|| {
        let mut searcher = searcher.clone();
        let matcher = matcher.clone();
        let shared = &shared;
        let glob = glob.as_ref();
        Box::new(move |result| {
            if shared.full() {
                return WalkState::Quit;
            }
            let dent = match result {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!("kb search: walk error: {e}");
                    return WalkState::Continue;
                }
            };
            // A glob whitelist takes precedence over the walker's hidden
            // filter, so dot-entries are refused here as well.
            if dent.depth() > 0 && is_hidden_name(&dent.file_name().to_string_lossy()) {
                return WalkState::Skip;
            }
            search_entry(&mut searcher, &matcher, shared, kb, glob, &dent);
            if shared.full() {
                WalkState::Quit
            } else {
                WalkState::Continue
            }
        })
    });

    let mut matches = shared
        .matches
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    matches.sort_by(|a, b| cmp_paths(&a.path, &b.path).then(a.line.cmp(&b.line)));
    let truncated = matches.len() > cap;
    matches.truncate(cap);
    Ok(SearchResults {
        matches,
        files_searched: shared.searched.into_inner(),
        files_skipped: shared.skipped.into_inner(),
        truncated,
    })
}

/// Searches one walked entry if it is a regular file, and publishes its
/// matches or counts it as skipped.
fn search_entry(
    searcher: &mut Searcher,
    matcher: &RegexMatcher,
    shared: &Shared,
    kb: &Kb,
    glob: Option<&Override>,
    dent: &DirEntry,
) {
    // Links are reported as links (never followed); folders are walked.
    if !dent.file_type().is_some_and(|t| t.is_file()) {
        return;
    }
    let path = dent.path();
    // The walker does not filter the starting point itself, so a search
    // restricted to one file applies the glob here.
    if dent.depth() == 0 && glob.is_some_and(|g| g.matched(path, false).is_ignore()) {
        return;
    }
    let Some(rel) = relative_display(kb.root(), path) else {
        return;
    };
    let skip = |why: &dyn std::fmt::Display| {
        tracing::debug!("kb search: skipping {rel}: {why}");
        shared.skipped.fetch_add(1, Ordering::Relaxed);
    };
    // Opened beneath the root's handle, not by the walker's path: a folder
    // swapped for a link while the walk runs is refused here.
    let file = match open_beneath(kb, &rel) {
        Ok(f) => f,
        Err(e) => return skip(&e),
    };
    match file.metadata() {
        Ok(m) if !m.is_file() => return,
        Ok(m) if m.len() > MAX_SEARCH_FILE_BYTES => return skip(&"too large"),
        Ok(_) => {}
        Err(e) => return skip(&e),
    }
    let mut sink = FileSink {
        shared,
        lines: Vec::new(),
        binary: false,
    };
    if let Err(e) = searcher.search_file(matcher, &file, &mut sink) {
        return skip(&e);
    }
    if sink.binary {
        return skip(&"binary");
    }
    shared.searched.fetch_add(1, Ordering::Relaxed);
    if sink.lines.is_empty() {
        return;
    }
    let n = sink.lines.len();
    let found = sink.lines.into_iter().map(|(line, snippet)| SearchMatch {
        path: rel.clone(),
        line,
        snippet,
    });
    shared
        .matches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(found);
    shared.committed.fetch_add(n, Ordering::Relaxed);
}

/// The regular file at `rel`, opened through the KB's root handle without
/// following a final link or blocking on a FIFO.
fn open_beneath(kb: &Kb, rel: &str) -> io::Result<File> {
    use cap_std::fs::OpenOptionsExt;
    let parsed = RelPath::parse(rel).map_err(io::Error::other)?;
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    Ok(kb.dir().open_with(parsed.as_path(), &opts)?.into_std())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_trims_terminators() {
        assert_eq!(snippet(b"hello\r\n"), "hello");
        assert_eq!(snippet(b"hello\n"), "hello");
        assert_eq!(snippet(b"  indented"), "  indented");
    }

    #[test]
    fn snippet_cuts_on_char_boundary() {
        let line = "é".repeat(300);
        let s = snippet(line.as_bytes());
        assert_eq!(s.chars().count(), SNIPPET_MAX_CHARS + 1);
        assert!(s.ends_with('…'));
        let exact = "a".repeat(SNIPPET_MAX_CHARS);
        assert_eq!(snippet(exact.as_bytes()), exact);
        let long = "a".repeat(10_000_000);
        assert_eq!(
            snippet(long.as_bytes()).chars().count(),
            SNIPPET_MAX_CHARS + 1
        );
    }

    #[test]
    fn display_is_grep_style() {
        let m = SearchMatch {
            path: "a/b.md".into(),
            line: 7,
            snippet: "text".into(),
        };
        assert_eq!(m.display(), "a/b.md:7: text");
    }
}
