//! Folder listings.

use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::path::{is_hidden_name, join_rel};
use super::title::{is_markdown, title_of_file};
use super::{
    DEFAULT_LIST_LIMIT, Entry, EntryKind, Kb, KbError, ListOptions, Listing, MAX_LIST_LIMIT,
};

/// `humantime` cannot format times before 1970 (it panics) or from year 10000
/// on (its `Display` fails); such timestamps are simply left out.
const MAX_FORMATTABLE_SECS: u64 = 253_402_300_800;

/// RFC 3339 UTC, to the second, if the time is in the range humantime handles.
pub fn format_time(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    if secs >= MAX_FORMATTABLE_SECS {
        return None;
    }
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

/// Whether a walk reads the title of each markdown file (which opens it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Titles {
    Read,
    Skip,
}

/// Describes the entry at `abs` from its (not link-following) metadata.
fn make_entry(abs: &Path, rel: String, meta: &Metadata, titles: Titles) -> Entry {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    // Only regular files are opened: opening a FIFO would block the listing.
    let title = (titles == Titles::Read && ft.is_file() && is_markdown(&rel))
        .then(|| title_of_file(abs))
        .flatten();
    Entry {
        size: if ft.is_file() { meta.len() } else { 0 },
        modified: meta.modified().ok().and_then(format_time),
        kind,
        title,
        path: rel,
    }
}

/// The children of `dir`, sorted by name, as (absolute, KB-relative) pairs.
fn sorted_children(
    dir: &Path,
    rel: &str,
    include_hidden: bool,
) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for dent in fs::read_dir(dir)? {
        let dent = match dent {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("kb: skipping unreadable entry while listing: {e}");
                continue;
            }
        };
        let name = dent.file_name().to_string_lossy().into_owned();
        if !include_hidden && is_hidden_name(&name) {
            continue;
        }
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        out.push((dent.path(), child_rel));
    }
    // Names sort by bytes; together with the pre-order walk below this
    // yields paths ordered component by component.
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Walks `dir` in sorted pre-order without following links, collecting at
/// most `limit` entries. Returns the entries and whether more were left.
fn walk(
    dir: &Path,
    rel: &str,
    recursive: bool,
    include_hidden: bool,
    limit: usize,
    titles: Titles,
) -> Result<(Vec<Entry>, bool), KbError> {
    let top =
        sorted_children(dir, rel, include_hidden).map_err(|e| KbError::from_io(&e, "list", rel))?;
    // An explicit stack rather than recursion: folder depth is not ours to
    // bound, the call stack is.
    let mut stack = vec![top.into_iter()];
    let mut entries = Vec::new();
    while let Some(level) = stack.last_mut() {
        let Some((abs, child_rel)) = level.next() else {
            stack.pop();
            continue;
        };
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            // Vanished since read_dir, or unreadable: leave it out.
            Err(e) => {
                tracing::debug!("kb: skipping {child_rel} while listing: {e}");
                continue;
            }
        };
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            // FIFOs, sockets and devices are not notes.
            continue;
        }
        if entries.len() >= limit {
            return Ok((entries, true));
        }
        let descend = recursive && meta.is_dir();
        entries.push(make_entry(&abs, child_rel.clone(), &meta, titles));
        if descend {
            match sorted_children(&abs, &child_rel, include_hidden) {
                Ok(children) => stack.push(children.into_iter()),
                Err(e) => tracing::debug!("kb: not descending into {child_rel}: {e}"),
            }
        }
    }
    Ok((entries, false))
}

pub(super) fn list(kb: &Kb, rel: &str, opts: &ListOptions) -> Result<Listing, KbError> {
    let (parsed, abs) = kb.locate(rel)?;
    let rel = parsed.display();
    let limit = match opts.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    };
    let meta = fs::metadata(&abs).map_err(|e| KbError::from_io(&e, "list", &rel))?;
    if !meta.is_dir() {
        // A file: describe it alone. Use the path as named (not the resolved
        // one) so a link shows up as a link.
        let named = join_rel(kb.root(), &rel);
        let own = fs::symlink_metadata(&named).unwrap_or(meta);
        return Ok(Listing {
            entries: vec![make_entry(&abs, rel.clone(), &own, Titles::Read)],
            path: rel,
            truncated: false,
        });
    }
    let (entries, truncated) = walk(
        &abs,
        &rel,
        opts.recursive,
        opts.include_hidden,
        limit,
        Titles::Read,
    )?;
    Ok(Listing {
        path: rel,
        entries,
        truncated,
    })
}

/// Every visible entry under the folder `dir` (KB-relative `rel`), in
/// sorted pre-order, titles not read.
pub(super) fn walk_paths(dir: &Path, rel: &str) -> Result<Vec<Entry>, KbError> {
    Ok(walk(dir, rel, true, false, usize::MAX, Titles::Skip)?.0)
}

/// Fills in the titles of the markdown files among `entries`.
pub(super) fn fill_titles(kb: &Kb, entries: &mut [Entry]) {
    for e in entries {
        if e.kind == EntryKind::File && e.title.is_none() && is_markdown(&e.path) {
            let abs = join_rel(kb.root(), &e.path);
            // Not a link (the walk left links out), unless it was swapped for
            // one since; then, like a vanished file, it simply has no title.
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.file_type().is_file() => e.title = title_of_file(&abs),
                _ => {}
            }
        }
    }
}
