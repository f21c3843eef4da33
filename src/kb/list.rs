//! Folder listings.

use std::time::{SystemTime, UNIX_EPOCH};

use cap_std::fs::{Dir, Metadata};

use super::path::{RelPath, is_hidden_name};
use super::title::{is_markdown, title_of_reader};
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

/// One child of a folder being listed, with its own (not followed) metadata.
struct Child {
    name: String,
    rel: String,
    meta: Metadata,
}

/// Describes a child of `dir` from its (not link-following) metadata; a
/// title is read by opening the file through `dir`.
fn make_entry(dir: &Dir, name: &str, rel: String, meta: &Metadata, titles: Titles) -> Entry {
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
        .then(|| title_in(dir, name))
        .flatten();
    Entry {
        size: if ft.is_file() { meta.len() } else { 0 },
        modified: meta
            .modified()
            .ok()
            .map(|t| t.into_std())
            .and_then(format_time),
        kind,
        title,
        path: rel,
    }
}

/// The title of the markdown file `name` in `dir` (not through a link).
fn title_in(dir: &Dir, name: &str) -> Option<String> {
    use cap_std::fs::OpenOptionsExt;
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    let file = dir.open_with(name, &opts).ok()?.into_std();
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    title_of_reader(file)
}

/// The children of `dir`, sorted by name.
fn sorted_children(dir: &Dir, rel: &str, include_hidden: bool) -> std::io::Result<Vec<Child>> {
    let mut out = Vec::new();
    for dent in dir.entries()? {
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
        let meta = match dent.metadata() {
            Ok(m) => m,
            // Vanished since it was listed, or unreadable: leave it out.
            Err(e) => {
                tracing::debug!("kb: skipping {name} while listing: {e}");
                continue;
            }
        };
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        out.push(Child {
            name,
            rel: child_rel,
            meta,
        });
    }
    // Names sort by bytes; together with the pre-order walk below this
    // yields paths ordered component by component.
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Walks `dir` in sorted pre-order without following links, collecting at
/// most `limit` entries. Returns the entries and whether more were left.
/// Sub-folders are opened through their parent's handle, so a folder
/// swapped for a link meanwhile is not walked.
fn walk(
    dir: Dir,
    rel: &str,
    recursive: bool,
    include_hidden: bool,
    limit: usize,
    titles: Titles,
) -> Result<(Vec<Entry>, bool), KbError> {
    let top = sorted_children(&dir, rel, include_hidden)
        .map_err(|e| KbError::from_io(&e, "list", rel))?;
    // An explicit stack rather than recursion: folder depth is not ours to
    // bound, the call stack is.
    let mut stack = vec![(dir, top.into_iter())];
    let mut entries = Vec::new();
    while let Some((dir, level)) = stack.last_mut() {
        let Some(child) = level.next() else {
            stack.pop();
            continue;
        };
        let ft = child.meta.file_type();
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            // FIFOs, sockets and devices are not notes.
            continue;
        }
        if entries.len() >= limit {
            return Ok((entries, true));
        }
        entries.push(make_entry(
            dir,
            &child.name,
            child.rel.clone(),
            &child.meta,
            titles,
        ));
        if recursive && ft.is_dir() {
            let sub = dir.open_dir(&child.name);
            match sub.and_then(|d| {
                let children = sorted_children(&d, &child.rel, include_hidden)?;
                Ok((d, children))
            }) {
                Ok((d, children)) => stack.push((d, children.into_iter())),
                Err(e) => tracing::debug!("kb: not descending into {}: {e}", child.rel),
            }
        }
    }
    Ok((entries, false))
}

pub(super) fn list(kb: &Kb, rel: &str, opts: &ListOptions) -> Result<Listing, KbError> {
    let parsed = RelPath::parse(rel)?;
    let rel = parsed.display();
    let limit = match opts.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    };
    let here = parsed.as_path();
    let meta = kb
        .dir()
        .metadata(&here)
        .map_err(|e| KbError::from_io(&e, "list", &rel))?;
    if !meta.is_dir() {
        // A file: describe it alone, as named (a link shows up as a link).
        let own = kb.dir().symlink_metadata(&here).unwrap_or(meta);
        let (parent, name) = match parsed.parts().split_last() {
            Some((name, folder)) => {
                let folder: std::path::PathBuf = folder.iter().collect();
                let parent = if folder.as_os_str().is_empty() {
                    kb.dir().try_clone()
                } else {
                    kb.dir().open_dir(&folder)
                };
                (
                    parent.map_err(|e| KbError::from_io(&e, "list", &rel))?,
                    name.clone(),
                )
            }
            None => return Err(KbError::EmptyPath),
        };
        return Ok(Listing {
            entries: vec![make_entry(&parent, &name, rel.clone(), &own, Titles::Read)],
            path: rel,
            truncated: false,
        });
    }
    let dir = kb
        .dir()
        .open_dir(&here)
        .map_err(|e| KbError::from_io(&e, "list", &rel))?;
    let (entries, truncated) = walk(
        dir,
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

/// Every visible entry under the KB-relative folder `rel`, in sorted
/// pre-order, titles not read.
pub(super) fn walk_paths(kb: &Kb, rel: &str) -> Result<Vec<Entry>, KbError> {
    let parsed = RelPath::parse(rel)?;
    let dir = kb
        .dir()
        .open_dir(parsed.as_path())
        .map_err(|e| KbError::from_io(&e, "list", rel))?;
    Ok(walk(
        dir,
        &parsed.display(),
        true,
        false,
        usize::MAX,
        Titles::Skip,
    )?
    .0)
}

/// Fills in the titles of the markdown files among `entries`.
pub(super) fn fill_titles(kb: &Kb, entries: &mut [Entry]) {
    for e in entries {
        if e.kind == EntryKind::File && e.title.is_none() && is_markdown(&e.path) {
            // Not through a link (the walk left links out): one swapped in
            // since, like a vanished file, simply has no title.
            let Ok(parsed) = RelPath::parse(&e.path) else {
                continue;
            };
            let Some((name, folder)) = parsed.parts().split_last() else {
                continue;
            };
            let folder: std::path::PathBuf = folder.iter().collect();
            let parent = if folder.as_os_str().is_empty() {
                kb.dir().try_clone()
            } else {
                kb.dir().open_dir(&folder)
            };
            if let Ok(parent) = parent {
                e.title = title_in(&parent, name);
            }
        }
    }
}
