//! What one caller sees of the knowledge base.
//!
//! Without authentication (stdio, one user) a view is the whole KB. With
//! `[auth]`, every subject gets a KB of its own, kept on disk under
//! `subjects/<name>-<hash>/` and shown to it as the root (its `inbox/`,
//! `outbox/`, `sessions/` and anything else it writes), with one shared
//! folder, `context/`, mounted in it: readable by every subject, writable
//! only by those `[auth] context_writers` names. A subject's own space is
//! opened beneath the KB root's handle on every use (never cached), so the
//! containment of [`Kb`] holds for it too; its paths, errors included, are
//! relative to the view, so nothing tells one subject where another's files
//! are.

use sha2::{Digest, Sha256};

use super::path::{RelPath, cmp_paths};
use super::{
    DEFAULT_LIST_LIMIT, DEFAULT_MAX_RESULTS, Entry, Kb, KbError, ListOptions, Listing,
    MAX_LIST_LIMIT, MAX_MAX_RESULTS, ReadChunk, SearchQuery, SearchResults, WriteMode,
    WriteOutcome,
};

/// The folder every subject shares.
pub const SHARED_DIR: &str = "context";
/// Where the subjects' own spaces live, under the KB root.
pub const SUBJECTS_DIR: &str = "subjects";
/// The folders a subject's space starts with (the shared one is mounted).
const OWN_DIRS: [&str; 3] = ["inbox", "outbox", "sessions"];

/// Whether a subject may write to the shared folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedAccess {
    /// Read and write (`[auth] context_writers` names the subject).
    ReadWrite,
    /// Read only.
    ReadOnly,
}

/// One caller's KB: the whole KB, or a subject's space with the shared
/// folder mounted in it.
#[derive(Debug, Clone)]
pub struct KbView {
    shared: Kb,
    own: Option<Own>,
}

#[derive(Debug, Clone)]
struct Own {
    kb: Kb,
    access: SharedAccess,
}

/// Where a view-relative path lives.
enum Place<'v> {
    /// The view's root, which both spaces make up.
    Root(&'v Own),
    /// The shared folder, or the whole KB without a subject.
    Shared,
    /// The subject's own space.
    Own(&'v Own),
}

/// The folder name of `subject`'s space: a readable prefix and a hash of the
/// whole subject (two subjects that read alike still differ).
pub fn subject_folder(subject: &str) -> String {
    let readable: String = subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let hash = Sha256::digest(subject.as_bytes());
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hex}")
}

impl Kb {
    /// The view of `subject` (`None`: the whole KB).
    pub fn view(&self, subject: Option<&str>, access: SharedAccess) -> Result<KbView, KbError> {
        let own = match subject {
            None => None,
            Some(s) => Some(Own {
                kb: self.subject_space(s)?,
                access,
            }),
        };
        Ok(KbView {
            shared: self.clone(),
            own,
        })
    }

    /// Where the engine keeps the files of `subject`'s tasks and runs: its
    /// own space, or the whole KB without a subject.
    pub fn for_subject(&self, subject: Option<&str>) -> Result<Kb, KbError> {
        match subject {
            None => Ok(self.clone()),
            Some(s) => self.subject_space(s),
        }
    }

    /// Opens (creating it if needed) `subject`'s space beneath the root.
    fn subject_space(&self, subject: &str) -> Result<Kb, KbError> {
        let rel = format!("{SUBJECTS_DIR}/{}", subject_folder(subject));
        let failed = |e: std::io::Error| KbError::from_io(&e, "open your knowledge base", "");
        let dir = match self.dir().open_dir(&rel) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.dir().create_dir_all(&rel).map_err(failed)?;
                let d = self.dir().open_dir(&rel).map_err(failed)?;
                for sub in OWN_DIRS {
                    d.create_dir_all(sub).map_err(failed)?;
                }
                d
            }
            Err(e) => return Err(failed(e)),
        };
        Ok(Kb {
            root: self.root().join(&rel),
            dir: std::sync::Arc::new(dir),
        })
    }
}

impl KbView {
    fn place(&self, rel: &RelPath) -> Place<'_> {
        match &self.own {
            None => Place::Shared,
            Some(own) if rel.is_root() => Place::Root(own),
            Some(own) if rel.parts()[0] == SHARED_DIR => Place::Shared,
            Some(own) => Place::Own(own),
        }
    }

    /// See [`Kb::read`].
    pub fn read(&self, rel: &str, offset: u64, limit: Option<u64>) -> Result<ReadChunk, KbError> {
        match self.place(&RelPath::parse(rel)?) {
            Place::Shared => self.shared.read(rel, offset, limit),
            Place::Root(own) | Place::Own(own) => own.kb.read(rel, offset, limit),
        }
    }

    /// See [`Kb::read_bytes`].
    pub fn read_bytes(&self, rel: &str) -> Result<Vec<u8>, KbError> {
        match self.place(&RelPath::parse(rel)?) {
            Place::Shared => self.shared.read_bytes(rel),
            Place::Root(own) | Place::Own(own) => own.kb.read_bytes(rel),
        }
    }

    /// See [`Kb::write`]; the shared folder only with [`SharedAccess::ReadWrite`].
    pub fn write(
        &self,
        rel: &str,
        content: &str,
        mode: WriteMode,
    ) -> Result<WriteOutcome, KbError> {
        let parsed = RelPath::parse(rel)?;
        match self.place(&parsed) {
            Place::Shared => {
                if let Some(own) = &self.own
                    && own.access == SharedAccess::ReadOnly
                {
                    return Err(KbError::SharedReadOnly {
                        path: parsed.display(),
                    });
                }
                self.shared.write(rel, content, mode)
            }
            Place::Root(own) | Place::Own(own) => own.kb.write(rel, content, mode),
        }
    }

    /// See [`Kb::list`]; the root of a subject's view shows both spaces.
    pub fn list(&self, rel: &str, opts: &ListOptions) -> Result<Listing, KbError> {
        match self.place(&RelPath::parse(rel)?) {
            Place::Shared => self.shared.list(rel, opts),
            Place::Own(own) => own.kb.list(rel, opts),
            Place::Root(own) => {
                let mine = own.kb.list("", opts)?;
                let mut entries = mine.entries;
                let mut truncated = mine.truncated;
                let top = self.shared.list("", &ListOptions::default())?;
                entries.extend(top.entries.into_iter().filter(|e| e.path == SHARED_DIR));
                if opts.recursive {
                    let shared = self.shared.list(SHARED_DIR, opts)?;
                    truncated |= shared.truncated;
                    entries.extend(shared.entries);
                }
                entries.sort_by(|a, b| cmp_paths(&a.path, &b.path));
                let limit = match opts.limit {
                    0 => DEFAULT_LIST_LIMIT,
                    n => n.min(MAX_LIST_LIMIT),
                };
                truncated |= entries.len() > limit;
                entries.truncate(limit);
                Ok(Listing {
                    path: String::new(),
                    entries,
                    truncated,
                })
            }
        }
    }

    /// See [`Kb::search`]; without a path, both spaces are searched.
    pub fn search(&self, q: &SearchQuery) -> Result<SearchResults, KbError> {
        let place = match q.path.as_deref() {
            None => match &self.own {
                None => Place::Shared,
                Some(own) => Place::Root(own),
            },
            Some(p) => self.place(&RelPath::parse(p)?),
        };
        match place {
            Place::Shared => self.shared.search(q),
            Place::Own(own) => own.kb.search(q),
            Place::Root(own) => {
                let mut found = own.kb.search(&SearchQuery {
                    path: None,
                    ..q.clone()
                })?;
                let shared = self.shared.search(&SearchQuery {
                    path: Some(SHARED_DIR.to_owned()),
                    ..q.clone()
                })?;
                found.matches.extend(shared.matches);
                found
                    .matches
                    .sort_by(|a, b| cmp_paths(&a.path, &b.path).then(a.line.cmp(&b.line)));
                let cap = match q.max_results {
                    0 => DEFAULT_MAX_RESULTS,
                    n => n.min(MAX_MAX_RESULTS),
                };
                found.truncated |= shared.truncated || found.matches.len() > cap;
                found.matches.truncate(cap);
                found.files_searched += shared.files_searched;
                found.files_skipped += shared.files_skipped;
                Ok(found)
            }
        }
    }

    /// See [`Kb::all_files`]: the subject's files and the shared folder's.
    pub fn all_files(&self) -> Result<Vec<Entry>, KbError> {
        let Some(own) = &self.own else {
            return self.shared.all_files();
        };
        let mut files = own.kb.all_files()?;
        match self.shared.files_under(SHARED_DIR) {
            Ok(shared) => files.extend(shared),
            // No shared folder (removed by hand) is an empty one.
            Err(KbError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        files.sort_by(|a, b| cmp_paths(&a.path, &b.path));
        Ok(files)
    }

    /// See [`Kb::fill_titles`].
    pub fn fill_titles(&self, entries: &mut [Entry]) {
        for e in entries {
            let kb = match RelPath::parse(&e.path).map(|p| self.place(&p)) {
                Ok(Place::Root(own) | Place::Own(own)) => &own.kb,
                Ok(Place::Shared) => &self.shared,
                Err(_) => continue,
            };
            kb.fill_titles(std::slice::from_mut(e));
        }
    }

    /// Where the subject's own space is, relative to the KB root
    /// (`subjects/<folder>`).
    fn own_base(&self) -> Option<String> {
        let own = self.own.as_ref()?;
        let rel = own.kb.root().strip_prefix(self.shared.root()).ok()?;
        Some(rel.to_str()?.replace('\\', "/"))
    }

    /// The KB-root-relative path of the view-relative `rel` (what the
    /// watcher would name), for change notices.
    pub fn disk_path(&self, rel: &str) -> String {
        match self.own_base() {
            Some(base) if rel.split('/').next() != Some(SHARED_DIR) => format!("{base}/{rel}"),
            _ => rel.to_owned(),
        }
    }

    /// Whether a change to the KB-root-relative `path` (from the watcher; `""`
    /// for anything) is one this view can see.
    pub fn sees(&self, path: &str) -> bool {
        if self.own.is_none() {
            return true;
        }
        let mine = self.own_base();
        let first = path.split('/').next().unwrap_or("");
        path.is_empty()
            || first == SHARED_DIR
            || mine.is_some_and(|m| path == m || path.starts_with(&format!("{m}/")))
    }
}
