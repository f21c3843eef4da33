//! Atomic writes: content goes to a hidden temp file beside the target, is
//! flushed to disk, and is then renamed over (or, for `create_new`, linked
//! into) place. Readers therefore see the old file or the new one, never a
//! half-written mix, and a crash leaves no partial note behind.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use tempfile::NamedTempFile;

use super::error::io_message;
use super::path::{self, RelPath};
use super::{Kb, KbError, MAX_DERIVED_BYTES, MAX_WRITE_BYTES, WriteMode, WriteOutcome};

/// Serialises writes made by this process. Append is read-modify-write, so
/// two concurrent appends (two agents logging to one file) would otherwise
/// lose one of the additions; KB writes are small and rare enough that one
/// lock costs nothing. Other processes are not covered.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// Who a write is for, which sets its size limit and durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client's or a model's `kb_write`: flushed to disk, up to
    /// [`MAX_WRITE_BYTES`].
    Client,
    /// A file the store can reproduce (outbox, sessions): not flushed, up to
    /// [`MAX_DERIVED_BYTES`].
    Derived,
}

pub(super) fn write(
    kb: &Kb,
    rel: &str,
    content: &str,
    mode: WriteMode,
    origin: Origin,
) -> Result<WriteOutcome, KbError> {
    let durable = origin == Origin::Client;
    let limit = match origin {
        Origin::Client => MAX_WRITE_BYTES,
        Origin::Derived => MAX_DERIVED_BYTES,
    };
    let parsed = RelPath::parse(rel)?;
    let (Some((name, folder)), false) = (parsed.parts().split_last(), parsed.is_root()) else {
        return Err(KbError::EmptyPath);
    };
    let rel = parsed.display();
    let new_len = content.len() as u64;
    let too_large = |size| KbError::ContentTooLarge {
        path: rel.clone(),
        size,
        limit,
    };
    if new_len > limit {
        return Err(too_large(new_len));
    }
    let io_err = |action, e: &io::Error| KbError::from_io(e, action, &rel);

    // Only appends read what they replace, so only they need the lock; the
    // rename of a whole-file write is atomic on its own, and holding the lock
    // across an fsync would serialise every write in the process. A poisoned
    // lock only means another write panicked; the guarded data is `()`.
    let _guard = (mode == WriteMode::Append)
        .then(|| WRITE_LOCK.lock().unwrap_or_else(PoisonError::into_inner));

    // A folder written to before, still the same folder, and a target that
    // is not a link: the checks below are settled, and the write costs a
    // handful of system calls instead of a walk of the whole path.
    let fast = kb.folders.get(folder).and_then(|parent| {
        let target = parent.join(name);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => None,
            Ok(meta) => Some((parent, target, Some(meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some((parent, target, None)),
            Err(_) => None,
        }
    });
    let (parent, target, existing) = match fast {
        Some(found) => found,
        None => {
            let abs = path::resolve_in(kb.root(), &parsed)?;
            let (Some(parent), Some(file_name)) = (abs.parent(), abs.file_name()) else {
                return Err(KbError::EmptyPath);
            };
            // `abs` has had its links resolved, so this is the real target.
            let existing = match fs::metadata(&abs) {
                Ok(meta) => Some(meta),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("write", &e)),
            };
            fs::create_dir_all(parent).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
                    KbError::NotADirectory { path: rel.clone() }
                }
                _ => io_err("create the folder for", &e),
            })?;
            // The folders were created after the path check; make sure nothing
            // swapped a link in meanwhile, and write via the canonical folder.
            let parent = fs::canonicalize(parent).map_err(|e| io_err("write", &e))?;
            if !parent.starts_with(kb.root()) {
                return Err(KbError::OutsideRoot { path: rel });
            }
            kb.folders.remember(folder, &parent);
            let target = parent.join(file_name);
            (parent, target, existing)
        }
    };
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(KbError::IsDirectory { path: rel });
    }
    if mode == WriteMode::CreateNew && existing.is_some() {
        return Err(KbError::AlreadyExists { path: rel });
    }
    if existing
        .as_ref()
        .is_some_and(|m| m.permissions().readonly())
    {
        return Err(KbError::Io {
            action: "write",
            path: rel,
            message: "the file is read-only".to_owned(),
        });
    }

    let old = match (&existing, mode) {
        (Some(meta), WriteMode::Append) => {
            let total = meta.len().saturating_add(new_len);
            if total > limit {
                return Err(too_large(total));
            }
            read_capped(&target, limit).map_err(|e| io_err("read", &e))?
        }
        _ => Vec::new(),
    };
    let total = old.len() as u64 + new_len;
    if total > limit {
        // The file grew between the size check and the read.
        return Err(too_large(total));
    }

    let mut tmp = temp_file_in(&parent, existing.as_ref()).map_err(|e| io_err("write", &e))?;
    // On any error below `tmp` is dropped, which deletes the temp file.
    tmp.write_all(&old)
        .and_then(|()| tmp.write_all(content.as_bytes()))
        .and_then(|()| {
            if durable {
                tmp.as_file().sync_all()
            } else {
                Ok(())
            }
        })
        .map_err(|e| io_err("write", &e))?;
    let persisted = if mode == WriteMode::CreateNew {
        // No-clobber: if another writer created the file since the check
        // above, fail instead of replacing their content.
        tmp.persist_noclobber(&target)
    } else {
        tmp.persist(&target)
    };
    if let Err(err) = persisted {
        // Dropping `err.file` removes the temp file.
        return Err(if err.error.kind() == io::ErrorKind::AlreadyExists {
            KbError::AlreadyExists { path: rel }
        } else {
            KbError::Io {
                action: "write",
                path: rel,
                message: io_message(&err.error),
            }
        });
    }
    if durable {
        sync_dir(&parent);
    }

    Ok(WriteOutcome {
        path: rel,
        bytes_written: new_len,
        total_bytes: total,
        created: existing.is_none(),
        mode,
    })
}

/// Folders that a write has checked (canonical, inside the root, made if
/// missing), by their KB-relative components, with their identity on disk.
///
/// A later write into the same folder checks only that the canonical path is
/// still a real folder with the same device and inode: a folder replaced by
/// a link, or moved and replaced, fails that and is walked and checked again.
#[derive(Debug, Default)]
pub(super) struct Folders(Mutex<HashMap<Vec<String>, Folder>>);

#[derive(Debug, Clone)]
struct Folder {
    path: PathBuf,
    id: (u64, u64),
}

impl Folders {
    /// The canonical path of `folder` if it was checked and is unchanged.
    fn get(&self, folder: &[String]) -> Option<PathBuf> {
        let known = self.lock().get(folder).cloned()?;
        let meta = fs::symlink_metadata(&known.path).ok();
        if meta.as_ref().and_then(identity) == Some(known.id) && meta.is_some_and(|m| m.is_dir()) {
            return Some(known.path);
        }
        self.lock().remove(folder);
        None
    }

    /// Remember a folder just checked (`path` canonical and inside the root).
    fn remember(&self, folder: &[String], path: &Path) {
        // A handful of folders are written to; bound it anyway.
        const MAX: usize = 256;
        let Some(id) = fs::symlink_metadata(path).ok().as_ref().and_then(identity) else {
            return;
        };
        let mut map = self.lock();
        if map.len() >= MAX {
            map.clear();
        }
        map.insert(
            folder.to_vec(),
            Folder {
                path: path.to_path_buf(),
                id,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<String>, Folder>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Device and inode: what tells one folder from another at the same path.
#[cfg(unix)]
pub(super) fn identity(meta: &fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

/// Elsewhere there is no cheap identity: every write checks the whole path.
#[cfg(not(unix))]
pub(super) fn identity(_: &fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Reads a whole existing file, refusing (rather than loading) one that has
/// grown past the write cap.
fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A hidden temp file in `dir` (dot-prefixed so listings, searches and
/// watchers that skip dot-files ignore it), with the permissions of the file
/// it replaces, or ordinary ones for a new file: `NamedTempFile` alone would
/// make every note owner-only (0600).
fn temp_file_in(dir: &Path, existing: Option<&fs::Metadata>) -> io::Result<NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".kb-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = existing.map_or(0o666, |m| m.permissions().mode() & 0o777);
        // The process umask still applies to the new file, as for any create.
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = existing;
    builder.tempfile_in(dir)
}

/// Flushes the folder entry of a rename to disk, so the new file survives a
/// crash. Best effort: not every platform or file system supports it, and
/// the data itself is already synced.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!("kb: folder sync after write failed: {e}");
    }
    #[cfg(not(unix))]
    let _ = dir;
}
