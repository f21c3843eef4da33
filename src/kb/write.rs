//! Atomic writes: content goes to a hidden temp file beside the target, is
//! flushed to disk, and is then renamed over (or, for `create_new`, linked
//! into) place. Readers therefore see the old file or the new one, never a
//! half-written mix, and a crash leaves no partial note behind.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use tempfile::NamedTempFile;

use super::error::io_message;
use super::{Kb, KbError, MAX_WRITE_BYTES, WriteMode, WriteOutcome};

/// Serialises writes made by this process. Append is read-modify-write, so
/// two concurrent appends (two agents logging to one file) would otherwise
/// lose one of the additions; KB writes are small and rare enough that one
/// lock costs nothing. Other processes are not covered.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

pub(super) fn write(
    kb: &Kb,
    rel: &str,
    content: &str,
    mode: WriteMode,
    durable: bool,
) -> Result<WriteOutcome, KbError> {
    let (parsed, abs) = kb.locate(rel)?;
    if parsed.is_root() {
        return Err(KbError::EmptyPath);
    }
    let rel = parsed.display();
    let new_len = content.len() as u64;
    let too_large = |size| KbError::ContentTooLarge {
        path: rel.clone(),
        size,
        limit: MAX_WRITE_BYTES,
    };
    if new_len > MAX_WRITE_BYTES {
        return Err(too_large(new_len));
    }
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(KbError::EmptyPath);
    };
    let io_err = |action, e: &io::Error| KbError::from_io(e, action, &rel);

    // Only appends read what they replace, so only they need the lock; the
    // rename of a whole-file write is atomic on its own, and holding the lock
    // across an fsync would serialise every write in the process. A poisoned
    // lock only means another write panicked; the guarded data is `()`.
    let _guard = (mode == WriteMode::Append)
        .then(|| WRITE_LOCK.lock().unwrap_or_else(PoisonError::into_inner));

    // `abs` has had its links resolved, so this is the real target.
    let existing = match fs::metadata(&abs) {
        Ok(meta) if meta.is_dir() => return Err(KbError::IsDirectory { path: rel }),
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("write", &e)),
    };
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
    let target = parent.join(name);

    let old = match (&existing, mode) {
        (Some(meta), WriteMode::Append) => {
            let total = meta.len().saturating_add(new_len);
            if total > MAX_WRITE_BYTES {
                return Err(too_large(total));
            }
            read_capped(&target).map_err(|e| io_err("read", &e))?
        }
        _ => Vec::new(),
    };
    let total = old.len() as u64 + new_len;
    if total > MAX_WRITE_BYTES {
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

/// Reads a whole existing file, refusing (rather than loading) one that has
/// grown past the write cap.
fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?
        .take(MAX_WRITE_BYTES + 1)
        .read_to_end(&mut buf)?;
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
