//! The set of a KB's files, kept current from a file watcher's reports.
//!
//! The server tells clients when the KB's file list changes. Walking the
//! whole KB after every batch of changes would cost O(files) per batch: with
//! an outbox file per task and thousands of files, a busy server spent a
//! third of its CPU re-walking (and, before, re-reading titles). Instead only
//! the paths the watcher names are looked at, each for what it is now; the
//! order of the events does not matter, only the current state of each path.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::list::walk_paths;
use super::path::{is_hidden_name, join_rel, relative_display};
use super::write::identity;
use super::{EntryKind, Kb};

/// The KB-relative paths of the KB's visible regular files, as
/// [`Kb::all_files`] lists them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileSet {
    files: BTreeMap<String, ()>,
    /// The folders seen, with their device and inode. A watcher names a
    /// folder for many reasons (a file in it was synced, say); one it names
    /// whose identity is unchanged holds nothing the watcher will not name
    /// by itself, so it needs no walk. One that is new (moved in, or put in
    /// place of another) is walked: a folder moved in is named alone.
    dirs: BTreeMap<String, Option<(u64, u64)>>,
}

impl FileSet {
    /// Walks the whole KB once. An unreadable KB gives an empty set (logged).
    pub fn scan(kb: &Kb) -> FileSet {
        let mut set = FileSet::default();
        set.add_tree(kb, "");
        set
    }

    /// Brings the set up to date for `changed` (absolute paths a watcher
    /// reported) and says whether its files changed. A path that is now a
    /// file is added; one that is gone, or is no longer a file, is removed
    /// together with anything that was under it; a folder that is new is
    /// walked. Paths outside the KB, or the KB folder itself, cause a
    /// full rescan.
    pub fn update<P: AsRef<Path>>(&mut self, kb: &Kb, changed: &[P]) -> bool {
        let mut changed_any = false;
        for abs in changed {
            let abs = abs.as_ref();
            let Some(rel) = relative_display(kb.root(), abs).filter(|r| !r.is_empty()) else {
                let now = FileSet::scan(kb);
                let differs = now.files != self.files;
                *self = now;
                return changed_any || differs;
            };
            if rel.split('/').any(is_hidden_name) {
                continue; // temp files of atomic writes, editor swap files...
            }
            changed_any |= self.refresh(kb, abs, &rel);
        }
        changed_any
    }

    /// Looks at one path (`abs`, KB-relative `rel`) as it is now: whether
    /// the files at and under it changed.
    fn refresh(&mut self, kb: &Kb, abs: &Path, rel: &str) -> bool {
        let meta = fs::symlink_metadata(abs);
        if let Ok(m) = &meta
            && m.is_dir()
            && let Some(id) = identity(m)
            && self.dirs.get(rel) == Some(&Some(id))
        {
            return false;
        }
        let before = take_under(&mut self.files, rel);
        take_under(&mut self.dirs, rel);
        match meta {
            Ok(m) if m.file_type().is_file() => {
                self.files.insert(rel.to_string(), ());
            }
            Ok(m) if m.is_dir() => {
                self.dirs.insert(rel.to_string(), identity(&m));
                self.add_tree(kb, rel);
            }
            // Gone, a link, a FIFO...: not a file of the KB (any more).
            _ => {}
        }
        before.keys().ne(keys_at(&self.files, rel))
    }

    /// Adds the files and folders under the KB-relative folder `rel`.
    fn add_tree(&mut self, kb: &Kb, rel: &str) {
        let entries = match walk_paths(kb, rel) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the knowledge base at `{rel}`");
                return;
            }
        };
        for e in entries {
            match e.kind {
                EntryKind::File => {
                    self.files.insert(e.path, ());
                }
                EntryKind::Dir => {
                    let abs = join_rel(kb.root(), &e.path);
                    let id = fs::symlink_metadata(&abs).ok().and_then(|m| identity(&m));
                    self.dirs.insert(e.path, id);
                }
                EntryKind::Symlink => {}
            }
        }
    }

    /// How many files the set holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the set holds no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether `rel` is in the set.
    pub fn contains(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }
}

/// The keys under the folder `rel`: those from `rel/` up to `rel0` (`0`
/// follows `/` in byte order). `rel` itself is not among them: `rel-x` and
/// `rel.md` sort between `rel` and `rel/`.
fn below(rel: &str) -> std::ops::Range<String> {
    format!("{rel}/")..format!("{rel}0")
}

/// `rel` and the keys under it, in order.
fn keys_at<'m, V>(m: &'m BTreeMap<String, V>, rel: &str) -> impl Iterator<Item = &'m String> {
    m.get_key_value(rel)
        .map(|(k, _)| k)
        .into_iter()
        .chain(m.range(below(rel)).map(|(k, _)| k))
}

/// Removes `rel` and everything under it from `m`, and returns them.
fn take_under<V>(m: &mut BTreeMap<String, V>, rel: &str) -> BTreeMap<String, V> {
    let keys: Vec<String> = keys_at(m, rel).cloned().collect();
    keys.into_iter()
        .filter_map(|k| m.remove_entry(&k))
        .collect()
}
