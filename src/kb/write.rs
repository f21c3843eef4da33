//! Atomic writes: content goes to a hidden temp file beside the target, is
//! flushed to disk, and is then renamed over (or, for `create_new`, linked
//! into) place. Readers therefore see the old file or the new one, never a
//! half-written mix, and a crash leaves no partial note behind.
//!
//! Every step runs relative to directory handles: the folder is created and
//! opened beneath the KB root's handle, and the temp file, the rename and
//! the link happen inside that folder's handle. A folder swapped for a link
//! to elsewhere is refused when it is opened, and nothing is remembered
//! between writes that a swap could invalidate.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use cap_std::fs::{Dir, OpenOptions};

use super::error::io_message;
use super::path::RelPath;
use super::{Kb, KbError, MAX_DERIVED_BYTES, MAX_WRITE_BYTES, WriteMode, WriteOutcome};

/// Serialises appends made by this process. Append is read-modify-write, so
/// two concurrent appends (two agents logging to one file) would otherwise
/// lose one of the additions; KB writes are small and rare enough that one
/// lock costs nothing. Other processes (several dispatch instances on one
/// shared `_kb/`) are kept out by [`FolderLock`].
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

/// How many links a write follows to reach its file.
const MAX_LINK_HOPS: usize = 8;

pub(super) fn write(
    kb: &Kb,
    rel: &str,
    content: &str,
    mode: WriteMode,
    origin: Origin,
) -> Result<WriteOutcome, KbError> {
    // Only appends read what they replace, so only they need the lock; the
    // rename of a whole-file write is atomic on its own, and holding the lock
    // across an fsync would serialise every write in the process. Taken here,
    // once, because a write through a link recurses. A poisoned lock only
    // means another write panicked; the guarded data is `()`.
    let _guard = (mode == WriteMode::Append)
        .then(|| WRITE_LOCK.lock().unwrap_or_else(PoisonError::into_inner));
    // Another process appending to this KB waits for us (and we for it) from
    // the read of the old content to the rename.
    let _others = match mode {
        WriteMode::Append => Some(
            AppendLock::take(kb.dir()).map_err(|e| KbError::from_io(&e, "lock", APPEND_LOCK))?,
        ),
        _ => None,
    };
    write_at(kb, rel, content, mode, origin, 0)
}

fn write_at(
    kb: &Kb,
    rel: &str,
    content: &str,
    mode: WriteMode,
    origin: Origin,
    hops: usize,
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

    let parent = open_folder(kb.dir(), folder, &rel)?;
    // A file link inside the KB is written through (the link stays): its
    // target is named again from the root and opened like any other path.
    if parent
        .symlink_metadata(name)
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        let target = parent
            .read_link(name)
            .map_err(|e| KbError::from_io(&e, "write", &rel))?;
        let through = link_target(kb.root(), folder, &target)
            .filter(|_| hops < MAX_LINK_HOPS)
            .ok_or_else(|| KbError::OutsideRoot { path: rel.clone() })?;
        let mut out = write_at(kb, &through, content, mode, origin, hops + 1)?;
        out.path = rel;
        return Ok(out);
    }
    // The target as it is now; a link is followed only to what lies beneath
    // the folder (a link leading out is refused here).
    let existing = match parent.metadata(name) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match parent.symlink_metadata(name) {
            // A dangling link: writing would create a file where it points.
            Ok(_) => return Err(KbError::OutsideRoot { path: rel }),
            Err(_) => None,
        },
        Err(e) => return Err(io_err("write", &e)),
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
            read_capped(&parent, name, limit).map_err(|e| io_err("read", &e))?
        }
        _ => Vec::new(),
    };
    let total = old.len() as u64 + new_len;
    if total > limit {
        // The file grew between the size check and the read.
        return Err(too_large(total));
    }

    let mode_bits = existing.as_ref().map_or(0o666, unix_mode);
    let mut tmp = TempFile::create(&parent, mode_bits).map_err(|e| io_err("write", &e))?;
    tmp.file
        .write_all(&old)
        .and_then(|()| tmp.file.write_all(content.as_bytes()))
        .and_then(|()| if durable { tmp.file.sync_all() } else { Ok(()) })
        .map_err(|e| io_err("write", &e))?;
    let placed = if mode == WriteMode::CreateNew {
        // No-clobber: if another writer created the file since the check
        // above, fail instead of replacing their content.
        tmp.link_as(name)
    } else {
        tmp.rename_to(name)
    };
    if let Err(e) = placed {
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
            KbError::AlreadyExists { path: rel }
        } else {
            KbError::Io {
                action: "write",
                path: rel,
                message: io_message(&e),
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

/// The hidden, empty file at the KB's root whose lock appends take (folder
/// handles are opened `O_PATH`, which cannot be locked themselves).
pub(super) const APPEND_LOCK: &str = ".kb-append.lock";

/// An exclusive advisory lock (`flock`) on the KB's [`APPEND_LOCK`] file,
/// held by an append from the read of a file's old content to the rename of
/// its new one, so that appends of several processes (dispatch instances on
/// one shared `_kb/`) each keep the others'. Released when dropped (the
/// descriptor closes); a process that dies releases it too.
struct AppendLock {
    _held: std::fs::File,
}

impl AppendLock {
    fn take(root: &Dir) -> io::Result<AppendLock> {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true);
        let file = root.open_with(APPEND_LOCK, &opts)?.into_std();
        file.lock()?;
        Ok(AppendLock { _held: file })
    }
}

/// Opens the folder `parts` beneath `root`, creating what is missing; a
/// component that is a file, or a link leading out, is refused.
fn open_folder(root: &Dir, parts: &[String], rel: &str) -> Result<Dir, KbError> {
    if parts.is_empty() {
        return root
            .try_clone()
            .map_err(|e| KbError::from_io(&e, "write", rel));
    }
    let folder: std::path::PathBuf = parts.iter().collect();
    let refused = |e: io::Error| match e.kind() {
        io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists => KbError::NotADirectory {
            path: rel.to_owned(),
        },
        _ => KbError::from_io(&e, "write", rel),
    };
    match root.open_dir(&folder) {
        Ok(d) => return Ok(d),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(refused(e)),
        Err(_) => {}
    }
    if let Err(e) = root.create_dir_all(&folder) {
        // Why it could not be made is best told by opening it.
        return Err(match root.open_dir(&folder) {
            Err(open) if open.kind() != io::ErrorKind::NotFound => refused(open),
            _ => KbError::from_io(&e, "create the folder for", rel),
        });
    }
    root.open_dir(&folder).map_err(refused)
}

/// The KB-relative path a link in `folder` names, if it stays inside the KB
/// (`root` is the KB's canonical path, for absolute link targets).
fn link_target(root: &Path, folder: &[String], target: &Path) -> Option<String> {
    use std::path::Component;
    let (mut parts, rest): (Vec<String>, &Path) = if target.is_absolute() {
        (Vec::new(), target.strip_prefix(root).ok()?)
    } else {
        (folder.to_vec(), target)
    };
    for c in rest.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(unix)]
fn unix_mode(meta: &cap_std::fs::Metadata) -> u32 {
    use cap_std::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn unix_mode(_: &cap_std::fs::Metadata) -> u32 {
    0o666
}

/// A hidden temp file in a folder (dot-prefixed so listings, searches and
/// watchers that skip dot-files ignore it), removed unless it is placed.
struct TempFile<'d> {
    dir: &'d Dir,
    name: String,
    file: std::fs::File,
    placed: bool,
}

impl<'d> TempFile<'d> {
    /// With the permissions of the file it replaces, or ordinary ones for a
    /// new file (the process umask applies, as for any create).
    fn create(dir: &'d Dir, mode: u32) -> io::Result<TempFile<'d>> {
        for _ in 0..16 {
            let name = format!(".kb-{:016x}.tmp", rand::random::<u64>());
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use cap_std::fs::OpenOptionsExt;
                opts.mode(mode);
            }
            #[cfg(not(unix))]
            let _ = mode;
            match dir.open_with(&name, &opts) {
                Ok(f) => {
                    return Ok(TempFile {
                        dir,
                        name,
                        file: f.into_std(),
                        placed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temp file name",
        ))
    }

    /// Rename over `name` (replacing a file or a link there).
    fn rename_to(mut self, name: &str) -> io::Result<()> {
        self.dir.rename(&self.name, self.dir, name)?;
        self.placed = true;
        Ok(())
    }

    /// Link as `name`, failing if it exists; then drop the temp name.
    fn link_as(mut self, name: &str) -> io::Result<()> {
        self.dir.hard_link(&self.name, self.dir, name)?;
        let _ = self.dir.remove_file(&self.name);
        self.placed = true;
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.placed {
            let _ = self.dir.remove_file(&self.name);
        }
    }
}

/// Reads a whole existing file, refusing (rather than loading) one that has
/// grown past the write cap.
fn read_capped(dir: &Dir, name: &str, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    dir.open(name)?
        .into_std()
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Flushes the folder entry of a rename to disk, so the new file survives a
/// crash. Best effort: not every platform or file system supports it, and
/// the data itself is already synced.
fn sync_dir(dir: &Dir) {
    if let Err(e) = try_sync_dir(dir) {
        tracing::debug!("kb: folder sync after write failed: {e}");
    }
}

/// The handle itself may be `O_PATH`, which cannot be synced: the folder is
/// opened for reading through it.
#[cfg(unix)]
fn try_sync_dir(dir: &Dir) -> io::Result<()> {
    dir.open_with(".", OpenOptions::new().read(true))?
        .into_std()
        .sync_all()
}

#[cfg(not(unix))]
fn try_sync_dir(_: &Dir) -> io::Result<()> {
    Ok(())
}

/// Device and inode: what tells one folder from another at the same path.
#[cfg(unix)]
pub(super) fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

/// Elsewhere there is no cheap identity.
#[cfg(not(unix))]
pub(super) fn identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::WriteMode;

    /// Lines each process appends in the test below.
    const APPENDS: usize = 150;

    /// The child side of the test below: appends when asked to.
    #[test]
    #[ignore = "run by appends_of_two_processes_keep_each_others"]
    fn append_worker() {
        let (Ok(dir), Ok(who)) = (
            std::env::var("DISPATCH_TEST_APPEND_KB"),
            std::env::var("DISPATCH_TEST_APPEND_WHO"),
        ) else {
            return;
        };
        let kb = super::Kb::open(std::path::Path::new(&dir)).unwrap();
        for i in 0..APPENDS {
            kb.write("notes/log.md", &format!("{who} {i}\n"), WriteMode::Append)
                .unwrap();
        }
    }

    /// Two processes (two dispatch instances on one shared `_kb/`) append
    /// to one file at once: every line of both is there.
    #[test]
    fn appends_of_two_processes_keep_each_others() {
        let d = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|who| {
                std::process::Command::new(&exe)
                    .args(["--exact", "kb::write::tests::append_worker", "--ignored"])
                    .env("DISPATCH_TEST_APPEND_KB", d.path())
                    .env("DISPATCH_TEST_APPEND_WHO", who)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let text = std::fs::read_to_string(d.path().join("notes/log.md")).unwrap();
        for who in ["a", "b"] {
            let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(who)).collect();
            assert_eq!(mine.len(), APPENDS, "{who} lost appends");
            assert!(
                mine.iter()
                    .enumerate()
                    .all(|(i, l)| *l == format!("{who} {i}"))
            );
        }
    }

    #[test]
    fn folders_can_be_synced() {
        let d = tempfile::tempdir().unwrap();
        let kb = super::Kb::open(d.path()).unwrap();
        super::try_sync_dir(kb.dir()).unwrap();
        let sub = super::open_folder(kb.dir(), &["a".to_owned()], "a/x.md").unwrap();
        super::try_sync_dir(&sub).unwrap();
    }
}
