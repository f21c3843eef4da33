//! Behavioural tests of the knowledge base against real temp folders.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::*;

type R = Result<(), Box<dyn std::error::Error>>;

/// A fresh knowledge base at `<tmp>/_kb`; the `TempDir` must outlive it.
fn setup() -> Result<(TempDir, Kb), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let kb = Kb::open(&dir.path().join("_kb"))?;
    Ok((dir, kb))
}

fn put(kb: &Kb, rel: &str, content: impl AsRef<[u8]>) -> R {
    let abs = kb.root().join(rel);
    if let Some(parent) = abs.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(abs, content)?;
    Ok(())
}

/// Every dot-file anywhere under `dir` (temp files would show up here).
fn hidden_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // The appends' lock file is meant to stay.
            if name.starts_with('.') && name != super::write::APPEND_LOCK {
                out.push(name.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Asserts the message is actionable and does not leak the root's location.
fn check_message(kb: &Kb, err: &KbError) {
    let msg = err.to_string();
    let root = kb.root().to_string_lossy();
    assert!(
        !msg.contains(root.as_ref()),
        "message leaks the root: {msg}"
    );
    assert!(!msg.contains("/tmp"), "message leaks a machine path: {msg}");
}

fn err<T: std::fmt::Debug>(kb: &Kb, r: Result<T, KbError>) -> KbError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            check_message(kb, &e);
            e
        }
    }
}

// ---------------------------------------------------------------- open

#[test]
fn open_creates_standard_folders_and_is_idempotent() -> R {
    let dir = TempDir::new()?;
    let kb = Kb::open(&dir.path().join("_kb"))?;
    for sub in STANDARD_DIRS {
        assert!(kb.root().join(sub).is_dir(), "{sub}");
    }
    put(&kb, "context/a.md", "# A")?;
    let again = Kb::open(&dir.path().join("_kb"))?;
    assert_eq!(again.root(), kb.root());
    assert!(again.root().join("context/a.md").is_file());
    assert_eq!(kb.root(), fs::canonicalize(kb.root())?);
    Ok(())
}

#[test]
fn open_on_a_file_fails() -> R {
    let dir = TempDir::new()?;
    let file = dir.path().join("_kb");
    fs::write(&file, "x")?;
    let e = match Kb::open(&file) {
        Ok(_) => panic!("opened a file as a knowledge base"),
        Err(e) => e,
    };
    assert!(
        !e.to_string().contains(&*dir.path().to_string_lossy()),
        "{e}"
    );
    Ok(())
}

// ---------------------------------------------------------------- paths

#[test]
fn resolve_refuses_every_traversal_form() -> R {
    let (_d, kb) = setup()?;
    for rel in [
        "..",
        "../x",
        "a/../../x",
        "a/../b",
        "..\\x",
        "..\\..\\x",
        "inbox/..",
    ] {
        let e = err(&kb, kb.resolve(rel));
        assert!(matches!(e, KbError::Traversal { .. }), "{rel}: {e}");
        assert!(e.to_string().contains(".."), "{e}");
        // Every entry point applies the same rules.
        assert!(matches!(
            err(&kb, kb.read(rel, 0, None)),
            KbError::Traversal { .. }
        ));
        assert!(matches!(
            err(&kb, kb.write(rel, "x", WriteMode::Overwrite)),
            KbError::Traversal { .. }
        ));
        assert!(matches!(
            err(&kb, kb.list(rel, &ListOptions::default())),
            KbError::Traversal { .. }
        ));
        let q = SearchQuery {
            pattern: "x".into(),
            path: Some(rel.into()),
            ..SearchQuery::default()
        };
        assert!(matches!(err(&kb, kb.search(&q)), KbError::Traversal { .. }));
    }
    Ok(())
}

#[test]
fn resolve_refuses_absolute_nul_and_long_paths() -> R {
    let (_d, kb) = setup()?;
    for rel in [
        "/etc/passwd",
        "C:\\x",
        "c:/x",
        "\\x",
        "\\\\server\\share\\x",
    ] {
        let e = err(&kb, kb.resolve(rel));
        assert!(matches!(e, KbError::Absolute { .. }), "{rel}: {e}");
        assert!(e.to_string().contains("absolute"), "{e}");
    }
    assert!(matches!(err(&kb, kb.resolve("a\0b")), KbError::NulByte));
    let long = "x".repeat(MAX_PATH_BYTES + 1);
    let e = err(&kb, kb.resolve(&long));
    assert!(matches!(e, KbError::PathTooLong { .. }));
    assert!(e.to_string().contains("4096"), "{e}");
    Ok(())
}

#[test]
fn resolve_maps_inside_the_root() -> R {
    let (_d, kb) = setup()?;
    assert_eq!(kb.resolve("")?, kb.root());
    assert_eq!(kb.resolve(".")?, kb.root());
    assert_eq!(
        kb.resolve("inbox/new/deep.md")?,
        kb.root().join("inbox/new/deep.md")
    );
    assert_eq!(kb.resolve("inbox\\x.md")?, kb.root().join("inbox/x.md"));
    Ok(())
}

#[cfg(unix)]
#[test]
fn symlinked_file_pointing_outside_is_refused() -> R {
    let (d, kb) = setup()?;
    let secret = d.path().join("secret.txt");
    fs::write(&secret, "top secret")?;
    std::os::unix::fs::symlink(&secret, kb.root().join("context/leak.md"))?;
    let e = err(&kb, kb.read("context/leak.md", 0, None));
    assert!(matches!(e, KbError::OutsideRoot { .. }), "{e}");
    assert!(e.to_string().contains("context/leak.md"));
    assert!(matches!(
        err(&kb, kb.read_bytes("context/leak.md")),
        KbError::OutsideRoot { .. }
    ));
    assert!(matches!(
        err(
            &kb,
            kb.write("context/leak.md", "pwned", WriteMode::Overwrite)
        ),
        KbError::OutsideRoot { .. }
    ));
    assert!(matches!(
        err(&kb, kb.write("context/leak.md", "pwned", WriteMode::Append)),
        KbError::OutsideRoot { .. }
    ));
    assert_eq!(fs::read_to_string(&secret)?, "top secret");
    // Listing the folder shows the link as a link without following it.
    let listing = kb.list("context", &ListOptions::default())?;
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].kind, EntryKind::Symlink);
    assert_eq!(listing.entries[0].title, None);
    // Search does not follow it either.
    let res = kb.search(&SearchQuery {
        pattern: "secret".into(),
        ..SearchQuery::default()
    })?;
    assert!(res.matches.is_empty(), "{res:?}");
    Ok(())
}

#[cfg(unix)]
#[test]
fn symlinked_dir_pointing_outside_is_refused() -> R {
    let (d, kb) = setup()?;
    let outside = d.path().join("outside");
    fs::create_dir(&outside)?;
    fs::write(outside.join("x.md"), "outside")?;
    std::os::unix::fs::symlink(&outside, kb.root().join("ext"))?;
    for rel in ["ext", "ext/x.md", "ext/new/deeper.md"] {
        assert!(
            matches!(err(&kb, kb.resolve(rel)), KbError::OutsideRoot { .. }),
            "{rel}"
        );
    }
    assert!(matches!(
        err(&kb, kb.read("ext/x.md", 0, None)),
        KbError::OutsideRoot { .. }
    ));
    assert!(matches!(
        err(&kb, kb.list("ext", &ListOptions::default())),
        KbError::OutsideRoot { .. }
    ));
    // Writing through the link must not create anything outside.
    for rel in ["ext/new.md", "ext/sub/new.md"] {
        for mode in [
            WriteMode::Overwrite,
            WriteMode::Append,
            WriteMode::CreateNew,
        ] {
            let e = err(&kb, kb.write(rel, "pwned", mode));
            assert!(
                matches!(e, KbError::OutsideRoot { .. }),
                "{rel} {mode:?}: {e}"
            );
        }
    }
    let outside_names: Vec<_> = fs::read_dir(&outside)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(outside_names, ["x.md"]);
    let q = SearchQuery {
        pattern: "outside".into(),
        path: Some("ext".into()),
        ..SearchQuery::default()
    };
    assert!(matches!(
        err(&kb, kb.search(&q)),
        KbError::OutsideRoot { .. }
    ));
    Ok(())
}

#[cfg(unix)]
#[test]
fn dangling_symlink_is_refused() -> R {
    let (d, kb) = setup()?;
    let target = d.path().join("not-yet");
    std::os::unix::fs::symlink(&target, kb.root().join("inbox/dangling.md"))?;
    assert!(matches!(
        err(
            &kb,
            kb.write("inbox/dangling.md", "x", WriteMode::Overwrite)
        ),
        KbError::OutsideRoot { .. }
    ));
    assert!(!target.exists());
    Ok(())
}

#[cfg(unix)]
#[test]
fn symlinks_inside_the_root_are_allowed() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "context/real.md", "# Real\nbody\n")?;
    // Links are followed when they are relative and stay inside: an
    // absolute one is refused even when it points into the KB (the root's
    // handle knows no absolute paths).
    std::os::unix::fs::symlink(kb.root().join("context"), kb.root().join("absolute"))?;
    assert!(matches!(
        kb.read("absolute/real.md", 0, None),
        Err(KbError::OutsideRoot { .. })
    ));
    std::os::unix::fs::symlink("context", kb.root().join("alias"))?;
    std::os::unix::fs::symlink("real.md", kb.root().join("context/link.md"))?;
    assert_eq!(kb.read("alias/real.md", 0, None)?.content, "# Real\nbody\n");
    assert_eq!(
        kb.read("context/link.md", 0, None)?.content,
        "# Real\nbody\n"
    );
    // Writing through a file link updates the target and keeps the link.
    kb.write("context/link.md", "new\n", WriteMode::Append)?;
    assert_eq!(
        fs::read_to_string(kb.root().join("context/real.md"))?,
        "# Real\nbody\nnew\n"
    );
    assert!(
        fs::symlink_metadata(kb.root().join("context/link.md"))?
            .file_type()
            .is_symlink()
    );
    // Writing through a folder link lands in the real folder.
    kb.write("alias/made.md", "made", WriteMode::CreateNew)?;
    assert!(kb.root().join("context/made.md").is_file());
    let listing = kb.list("alias", &ListOptions::default())?;
    let names: Vec<_> = listing.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["alias/link.md", "alias/made.md", "alias/real.md"]);
    Ok(())
}

// ---------------------------------------------------------------- read

/// Text mixing 1-, 2-, 3- and 4-byte characters.
fn mixed_text() -> String {
    let mut s = String::new();
    for i in 0..200 {
        s.push_str(&format!("{i} aé€😀 ß—ü 漢字🎉\n"));
    }
    s
}

#[test]
fn paging_reconstructs_multibyte_text_exactly() -> R {
    let (_d, kb) = setup()?;
    let text = mixed_text();
    put(&kb, "context/utf8.md", &text)?;
    for limit in [1, 2, 3, 4, 5, 7, 13, 64, 1000, 100_000] {
        let mut out = String::new();
        let mut offset = 0;
        let mut calls = 0;
        loop {
            let chunk = kb.read("context/utf8.md", offset, Some(limit))?;
            assert_eq!(
                chunk.offset, offset,
                "limit {limit}: chunks must be contiguous"
            );
            assert_eq!(chunk.bytes_read, chunk.content.len() as u64);
            assert_eq!(chunk.total_bytes, text.len() as u64);
            assert!(chunk.bytes_read <= limit.max(4), "limit {limit}");
            assert!(chunk.bytes_read > 0, "limit {limit}: no progress");
            out.push_str(&chunk.content);
            calls += 1;
            match chunk.next_offset {
                Some(next) => {
                    assert!(!chunk.eof);
                    offset = next;
                }
                None => {
                    assert!(chunk.eof);
                    break;
                }
            }
            assert!(calls < 100_000);
        }
        assert_eq!(out, text, "limit {limit}");
    }
    Ok(())
}

#[test]
fn offset_inside_a_character_moves_forward() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "a.md", "😀x")?;
    let chunk = kb.read("a.md", 1, None)?;
    assert_eq!(chunk.offset, 4);
    assert_eq!(chunk.content, "x");
    assert!(chunk.eof);
    Ok(())
}

#[test]
fn limit_is_defaulted_and_clamped() -> R {
    let (_d, kb) = setup()?;
    let big = "abcdefgh\n".repeat(300_000); // ~2.7 MB
    put(&kb, "big.txt", &big)?;
    let c = kb.read("big.txt", 0, None)?;
    assert_eq!(c.bytes_read, DEFAULT_READ_LIMIT);
    assert_eq!(c.next_offset, Some(DEFAULT_READ_LIMIT));
    let c = kb.read("big.txt", 0, Some(0))?;
    assert_eq!(c.bytes_read, DEFAULT_READ_LIMIT);
    let c = kb.read("big.txt", 0, Some(u64::MAX))?;
    assert_eq!(c.bytes_read, MAX_READ_LIMIT);
    assert!(!c.eof);
    let c = kb.read("big.txt", 10, Some(5))?;
    assert_eq!(c.content, "bcdef");
    Ok(())
}

#[test]
fn offset_beyond_the_end_is_empty_eof() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "a.md", "hello")?;
    for offset in [5, 6, 1 << 40, u64::MAX] {
        let c = kb.read("a.md", offset, None)?;
        assert_eq!(c.content, "");
        assert_eq!(c.bytes_read, 0);
        assert!(c.eof);
        assert_eq!(c.next_offset, None);
    }
    put(&kb, "empty.md", "")?;
    let c = kb.read("empty.md", 0, None)?;
    assert!(c.eof && c.content.is_empty() && c.total_bytes == 0);
    Ok(())
}

#[test]
fn binary_files_are_refused_with_a_pointer_to_resources() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "img.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")?;
    let e = err(&kb, kb.read("img.png", 0, None));
    assert!(matches!(e, KbError::Binary { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("binary") && msg.contains("kb://img.png"),
        "{msg}"
    );
    // The NUL is judged over the first 8 KiB whatever the offset.
    assert!(matches!(
        err(&kb, kb.read("img.png", 12, None)),
        KbError::Binary { .. }
    ));
    // Invalid UTF-8 without a NUL, past the sniffed prefix, is caught in the chunk.
    let mut latin1 = "a".repeat(10_000).into_bytes();
    latin1.extend_from_slice(b"caf\xe9 au lait\n");
    put(&kb, "latin1.txt", &latin1)?;
    assert_eq!(kb.read("latin1.txt", 0, Some(100))?.bytes_read, 100);
    assert!(matches!(
        err(&kb, kb.read("latin1.txt", 0, None)),
        KbError::Binary { .. }
    ));
    // The bytes are still available whole.
    assert_eq!(kb.read_bytes("img.png")?, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    Ok(())
}

#[test]
fn read_errors_say_what_to_do() -> R {
    let (_d, kb) = setup()?;
    let e = err(&kb, kb.read("inbox", 0, None));
    assert!(matches!(e, KbError::IsDirectory { .. }));
    assert!(e.to_string().contains("kb_list"), "{e}");
    let e = err(&kb, kb.read("inbox/missing.md", 0, None));
    assert!(matches!(e, KbError::NotFound { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("inbox/missing.md") && msg.contains("kb_list"),
        "{msg}"
    );
    for rel in ["", ".", "./"] {
        let e = err(&kb, kb.read(rel, 0, None));
        assert!(matches!(e, KbError::EmptyPath), "{rel}");
        assert!(matches!(err(&kb, kb.read_bytes(rel)), KbError::EmptyPath));
        assert!(matches!(
            err(&kb, kb.write(rel, "x", WriteMode::Overwrite)),
            KbError::EmptyPath
        ));
    }
    put(&kb, "file.md", "x")?;
    let e = err(&kb, kb.read("file.md/child.md", 0, None));
    assert!(
        matches!(e, KbError::NotADirectory { .. } | KbError::NotFound { .. }),
        "{e}"
    );
    Ok(())
}

#[test]
fn read_bytes_is_capped() -> R {
    let (_d, kb) = setup()?;
    let f = fs::File::create(kb.root().join("huge.bin"))?;
    f.set_len(MAX_RESOURCE_BYTES + 1)?; // sparse: costs no disk
    let e = err(&kb, kb.read_bytes("huge.bin"));
    assert!(matches!(e, KbError::TooLarge { .. }), "{e}");
    assert!(
        e.to_string().contains(&MAX_RESOURCE_BYTES.to_string()),
        "{e}"
    );
    assert!(matches!(
        err(&kb, kb.read_bytes("inbox")),
        KbError::IsDirectory { .. }
    ));
    Ok(())
}

// ---------------------------------------------------------------- write

#[test]
fn overwrite_creates_then_replaces() -> R {
    let (_d, kb) = setup()?;
    let w = kb.write("outbox/report.md", "first version", WriteMode::Overwrite)?;
    assert!(w.created);
    assert_eq!(w.path, "outbox/report.md");
    assert_eq!(w.bytes_written, 13);
    assert_eq!(w.total_bytes, 13);
    assert_eq!(w.mode, WriteMode::Overwrite);
    let w = kb.write("outbox\\report.md", "v2", WriteMode::Overwrite)?;
    assert!(!w.created);
    assert_eq!(w.total_bytes, 2);
    assert_eq!(
        fs::read_to_string(kb.root().join("outbox/report.md"))?,
        "v2"
    );
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[test]
fn append_adds_to_the_end_or_creates() -> R {
    let (_d, kb) = setup()?;
    let w = kb.write("sessions/log.md", "one\n", WriteMode::Append)?;
    assert!(w.created);
    let w = kb.write("sessions/log.md", "two\n", WriteMode::Append)?;
    assert!(!w.created);
    assert_eq!(w.bytes_written, 4);
    assert_eq!(w.total_bytes, 8);
    assert_eq!(
        fs::read_to_string(kb.root().join("sessions/log.md"))?,
        "one\ntwo\n"
    );
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[test]
fn concurrent_appends_lose_nothing() -> R {
    let (_d, kb) = setup()?;
    std::thread::scope(|s| {
        for t in 0..8 {
            let kb = &kb;
            s.spawn(move || {
                for i in 0..20 {
                    let line = format!("t{t} i{i}\n");
                    if let Err(e) = kb.write("sessions/shared.md", &line, WriteMode::Append) {
                        panic!("append failed: {e}");
                    }
                }
            });
        }
    });
    let text = fs::read_to_string(kb.root().join("sessions/shared.md"))?;
    assert_eq!(text.lines().count(), 160);
    Ok(())
}

#[test]
fn create_new_never_clobbers() -> R {
    let (_d, kb) = setup()?;
    let w = kb.write("inbox/task.md", "mine", WriteMode::CreateNew)?;
    assert!(w.created);
    let e = err(
        &kb,
        kb.write("inbox/task.md", "theirs", WriteMode::CreateNew),
    );
    assert!(matches!(e, KbError::AlreadyExists { .. }), "{e}");
    assert!(e.to_string().contains("overwrite"), "{e}");
    assert_eq!(fs::read_to_string(kb.root().join("inbox/task.md"))?, "mine");
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[test]
fn concurrent_create_new_has_one_winner() -> R {
    let (_d, kb) = setup()?;
    let wins = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (kb, wins) = (&kb, &wins);
            s.spawn(move || {
                match kb.write("inbox/claim.md", &format!("t{t}"), WriteMode::CreateNew) {
                    Ok(_) => {
                        wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(KbError::AlreadyExists { .. }) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            });
        }
    });
    assert_eq!(wins.into_inner(), 1);
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[test]
fn write_creates_parents_and_refuses_folders() -> R {
    let (_d, kb) = setup()?;
    kb.write("context/a/b/c/note.md", "deep", WriteMode::CreateNew)?;
    assert!(kb.root().join("context/a/b/c/note.md").is_file());
    let e = err(&kb, kb.write("context/a", "x", WriteMode::Overwrite));
    assert!(matches!(e, KbError::IsDirectory { .. }), "{e}");
    let e = err(
        &kb,
        kb.write("context/a/b/c/note.md/x.md", "x", WriteMode::Overwrite),
    );
    assert!(matches!(e, KbError::NotADirectory { .. }), "{e}");
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[test]
fn write_size_is_capped_including_appends() -> R {
    let (_d, kb) = setup()?;
    let too_big = "x".repeat(MAX_WRITE_BYTES as usize + 1);
    let e = err(&kb, kb.write("big.md", &too_big, WriteMode::Overwrite));
    assert!(matches!(e, KbError::ContentTooLarge { .. }), "{e}");
    assert!(e.to_string().contains(&MAX_WRITE_BYTES.to_string()), "{e}");
    assert!(!kb.root().join("big.md").exists());
    let half = "x".repeat(MAX_WRITE_BYTES as usize / 2 + 1);
    kb.write("big.md", &half, WriteMode::Overwrite)?;
    let e = err(&kb, kb.write("big.md", &half, WriteMode::Append));
    assert!(matches!(e, KbError::ContentTooLarge { .. }), "{e}");
    assert_eq!(
        fs::metadata(kb.root().join("big.md"))?.len(),
        half.len() as u64
    );
    let exact = "y".repeat(MAX_WRITE_BYTES as usize);
    assert_eq!(
        kb.write("exact.md", &exact, WriteMode::Overwrite)?
            .total_bytes,
        MAX_WRITE_BYTES
    );
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[cfg(unix)]
#[test]
fn write_keeps_permissions_of_the_replaced_file() -> R {
    use std::os::unix::fs::PermissionsExt;
    let (_d, kb) = setup()?;
    put(&kb, "p.md", "x")?;
    fs::set_permissions(kb.root().join("p.md"), fs::Permissions::from_mode(0o640))?;
    kb.write("p.md", "y", WriteMode::Overwrite)?;
    assert_eq!(
        fs::metadata(kb.root().join("p.md"))?.permissions().mode() & 0o777,
        0o640
    );
    // New files are ordinary files, not owner-only temp files.
    kb.write("n.md", "y", WriteMode::Overwrite)?;
    let mode = fs::metadata(kb.root().join("n.md"))?.permissions().mode() & 0o777;
    assert_ne!(mode, 0o600, "new file kept the temp file's 0600");
    Ok(())
}

// ---------------------------------------------------------------- list

#[test]
fn list_root_and_recursive() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "context/b.md", "# B")?;
    put(&kb, "context/a/x.txt", "x")?;
    put(&kb, "context/a.md", "no heading")?;
    let l = kb.list("", &ListOptions::default())?;
    assert_eq!(l.path, "");
    assert!(!l.truncated);
    let names: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["context", "inbox", "outbox", "sessions"]);
    assert!(
        l.entries
            .iter()
            .all(|e| e.kind == EntryKind::Dir && e.size == 0)
    );
    let l = kb.list(
        "context",
        &ListOptions {
            recursive: true,
            ..ListOptions::default()
        },
    )?;
    let names: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "context/a",
            "context/a/x.txt",
            "context/a.md",
            "context/b.md"
        ]
    );
    let x = &l.entries[1];
    assert_eq!((x.kind, x.size), (EntryKind::File, 1));
    let modified = x.modified.as_deref().unwrap_or_default();
    assert!(
        modified.len() == 20 && modified.ends_with('Z'),
        "{modified}"
    );
    let l = kb.list("context", &ListOptions::default())?;
    assert_eq!(l.entries.len(), 3);
    Ok(())
}

#[test]
fn list_titles() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "t/atx.md", "Intro\n\n## Atx *title*\n")?;
    put(&kb, "t/setext.markdown", "Setext title\n============\n")?;
    put(
        &kb,
        "t/front.md",
        "---\ntitle: From front matter\n---\n# Heading\n",
    )?;
    put(
        &kb,
        "t/front-no-title.md",
        "---\ntags: [a]\n---\nPara\n\n# After front\n",
    )?;
    put(&kb, "t/none.md", "just text\n")?;
    put(&kb, "t/not-md.txt", "# Not markdown\n")?;
    put(&kb, "t/binary.md", b"# Bin\0ary")?;
    let big = format!(
        "{}\n# Too far\n",
        "x".repeat(TITLE_SCAN_BYTES as usize + 10)
    );
    put(&kb, "t/late.md", big)?;
    let l = kb.list("t", &ListOptions::default())?;
    let titles: Vec<_> = l
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.title.as_deref()))
        .collect();
    assert_eq!(
        titles,
        [
            ("t/atx.md", Some("Atx title")),
            ("t/binary.md", None),
            ("t/front-no-title.md", Some("After front")),
            ("t/front.md", Some("From front matter")),
            ("t/late.md", None),
            ("t/none.md", None),
            ("t/not-md.txt", None),
            ("t/setext.markdown", Some("Setext title")),
        ]
    );
    Ok(())
}

#[test]
fn list_hidden_limit_and_single_file() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "inbox/.hidden.md", "h")?;
    put(&kb, "inbox/.dir/inner.md", "h")?;
    put(&kb, "inbox/visible.md", "# Vis")?;
    let rec = ListOptions {
        recursive: true,
        ..ListOptions::default()
    };
    let l = kb.list("inbox", &rec)?;
    let names: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["inbox/visible.md"]);
    let l = kb.list(
        "inbox",
        &ListOptions {
            include_hidden: true,
            ..rec.clone()
        },
    )?;
    let names: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "inbox/.dir",
            "inbox/.dir/inner.md",
            "inbox/.hidden.md",
            "inbox/visible.md"
        ]
    );
    let l = kb.list(
        "",
        &ListOptions {
            limit: 2,
            ..rec.clone()
        },
    )?;
    assert_eq!(l.entries.len(), 2);
    assert!(l.truncated);
    let l = kb.list("inbox/visible.md", &ListOptions::default())?;
    assert_eq!(l.path, "inbox/visible.md");
    assert_eq!(l.entries.len(), 1);
    assert_eq!(l.entries[0].title.as_deref(), Some("Vis"));
    assert_eq!(l.entries[0].kind, EntryKind::File);
    let e = err(&kb, kb.list("nope", &ListOptions::default()));
    assert!(matches!(e, KbError::NotFound { .. }), "{e}");
    Ok(())
}

#[test]
fn all_files_lists_files_sorted() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "sessions/s1/log.md", "# S1")?;
    put(&kb, "context/z.md", "z")?;
    put(&kb, "context/a/b.bin", b"\0\x01")?;
    put(&kb, "context/.swap", "x")?;
    put(&kb, "a.md", "root file")?;
    let files = kb.all_files()?;
    let names: Vec<_> = files.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "a.md",
            "context/a/b.bin",
            "context/z.md",
            "sessions/s1/log.md"
        ]
    );
    assert!(files.iter().all(|e| e.kind == EntryKind::File));
    // Titles are read only on request.
    assert!(files.iter().all(|e| e.title.is_none()));
    let mut files = files;
    kb.fill_titles(&mut files);
    assert_eq!(files[3].title.as_deref(), Some("S1"));
    assert_eq!(files[1].title, None, "not markdown");
    Ok(())
}

// ---------------------------------------------------------------- file set

#[test]
fn file_set_follows_the_paths_it_is_told() -> R {
    let (d, kb) = setup()?;
    put(&kb, "a.md", "# A")?;
    put(&kb, "notes/b.md", "b")?;
    put(&kb, ".hidden.md", "h")?;
    let mut set = FileSet::scan(&kb);
    assert_eq!(set.len(), 2);
    let root = kb.root().to_path_buf();

    // A new file is added; telling it again, or an edit in place, is no change.
    put(&kb, "outbox/c.md", "c")?;
    assert!(set.update(&kb, &[root.join("outbox/c.md")]));
    assert!(set.contains("outbox/c.md"));
    put(&kb, "outbox/c.md", "c, edited")?;
    assert!(!set.update(&kb, &[root.join("outbox/c.md")]));
    // A folder it knows is not walked when named (a watcher names one for
    // many reasons): files in it count only once they are named themselves.
    put(&kb, "outbox/untold.md", "u")?;
    assert!(!set.update(&kb, &[root.join("outbox")]));
    assert!(!set.contains("outbox/untold.md"));
    assert!(set.update(&kb, &[root.join("outbox/untold.md")]));

    // Temp files of atomic writes and other hidden paths do not count.
    put(&kb, "outbox/.tmp123", "x")?;
    assert!(!set.update(&kb, &[root.join("outbox/.tmp123")]));

    // A removed file goes; a file swapped for a link goes too.
    fs::remove_file(root.join("a.md"))?;
    assert!(set.update(&kb, &[root.join("a.md")]));
    assert!(!set.contains("a.md"));
    #[cfg(unix)]
    {
        fs::remove_file(root.join("outbox/c.md"))?;
        std::os::unix::fs::symlink(root.join("notes/b.md"), root.join("outbox/c.md"))?;
        assert!(set.update(&kb, &[root.join("outbox/c.md")]));
        assert!(!set.contains("outbox/c.md"));
    }

    // A folder moved in brings its files; moved out, takes them along.
    let outside = d.path().join("elsewhere");
    fs::create_dir_all(outside.join("deep"))?;
    fs::write(outside.join("deep/x.md"), "x")?;
    fs::write(outside.join("y.md"), "y")?;
    fs::rename(&outside, root.join("moved"))?;
    assert!(set.update(&kb, &[root.join("moved")]));
    assert!(set.contains("moved/deep/x.md") && set.contains("moved/y.md"));
    fs::rename(root.join("moved"), &outside)?;
    assert!(set.update(&kb, &[root.join("moved")]));
    assert!(!set.contains("moved/y.md") && !set.contains("moved/deep/x.md"));

    // A folder put in place of one it knew is walked.
    fs::create_dir_all(outside.join("inner"))?;
    fs::write(outside.join("inner/z.md"), "z")?;
    fs::rename(root.join("notes"), d.path().join("old-notes"))?;
    fs::rename(&outside, root.join("notes"))?;
    assert!(set.update(&kb, &[root.join("notes")]));
    assert!(set.contains("notes/inner/z.md") && !set.contains("notes/b.md"));

    // A path outside the KB (or the KB itself) makes it walk everything.
    put(&kb, "untold.md", "u")?;
    assert!(set.update(&kb, &[kb.root().to_path_buf()]));
    assert!(set.contains("untold.md"));
    assert_eq!(set, FileSet::scan(&kb));
    assert!(!set.update(&kb, &[d.path().join("elsewhere")]));
    Ok(())
}

// ---------------------------------------------------------------- search

fn q(pattern: &str) -> SearchQuery {
    SearchQuery {
        pattern: pattern.into(),
        ..SearchQuery::default()
    }
}

fn hits(res: &SearchResults) -> Vec<String> {
    res.matches.iter().map(SearchMatch::display).collect()
}

fn search_fixture() -> Result<(TempDir, Kb), Box<dyn std::error::Error>> {
    let (d, kb) = setup()?;
    put(&kb, "context/a.md", "alpha a.c\nabc here\nNothing\n")?;
    put(&kb, "context/b.txt", "ABC upper\r\nabc crlf\r\n")?;
    put(&kb, "inbox/task.md", "todo: abc\n")?;
    put(&kb, "inbox/.secret.md", "abc hidden\n")?;
    put(&kb, ".hiddendir/x.md", "abc hidden dir\n")?;
    // Git-ignore everything: the knowledge base must still be searched.
    put(&kb, ".gitignore", "*\n")?;
    put(&kb, ".ignore", "*\n")?;
    fs::create_dir_all(kb.root().join(".git"))?;
    Ok((d, kb))
}

#[test]
fn search_literal_regex_and_case() -> R {
    let (_d, kb) = search_fixture()?;
    let res = kb.search(&q("a.c"))?;
    assert_eq!(hits(&res), ["context/a.md:1: alpha a.c"]);
    assert_eq!(res.files_searched, 3);
    assert_eq!(res.files_skipped, 0);
    assert!(!res.truncated);

    let res = kb.search(&SearchQuery {
        regex: true,
        ..q("a.c")
    })?;
    assert_eq!(
        hits(&res),
        [
            "context/a.md:1: alpha a.c",
            "context/a.md:2: abc here",
            "context/b.txt:2: abc crlf",
            "inbox/task.md:1: todo: abc",
        ]
    );

    let res = kb.search(&SearchQuery {
        case_insensitive: true,
        ..q("ABC")
    })?;
    assert_eq!(
        hits(&res),
        [
            "context/a.md:2: abc here",
            "context/b.txt:1: ABC upper",
            "context/b.txt:2: abc crlf",
            "inbox/task.md:1: todo: abc",
        ]
    );
    // `$` works on CRLF lines.
    let res = kb.search(&SearchQuery {
        regex: true,
        ..q("crlf$")
    })?;
    assert_eq!(hits(&res), ["context/b.txt:2: abc crlf"]);
    Ok(())
}

#[test]
fn search_glob_and_path_restriction() -> R {
    let (_d, kb) = search_fixture()?;
    let res = kb.search(&SearchQuery {
        glob: Some("*.md".into()),
        ..q("abc")
    })?;
    assert_eq!(
        hits(&res),
        ["context/a.md:2: abc here", "inbox/task.md:1: todo: abc"]
    );
    // Globs are relative to the root even with a path restriction.
    let res = kb.search(&SearchQuery {
        glob: Some("context/*".into()),
        ..q("abc")
    })?;
    assert_eq!(res.matches.len(), 2);
    let res = kb.search(&SearchQuery {
        path: Some("inbox".into()),
        ..q("abc")
    })?;
    assert_eq!(hits(&res), ["inbox/task.md:1: todo: abc"]);
    let res = kb.search(&SearchQuery {
        path: Some("context/b.txt".into()),
        ..q("abc")
    })?;
    assert_eq!(hits(&res), ["context/b.txt:2: abc crlf"]);
    assert_eq!(res.files_searched, 1);
    let res = kb.search(&SearchQuery {
        path: Some("context/b.txt".into()),
        glob: Some("*.md".into()),
        ..q("abc")
    })?;
    assert!(res.matches.is_empty());
    let e = err(
        &kb,
        kb.search(&SearchQuery {
            path: Some("missing".into()),
            ..q("abc")
        }),
    );
    assert!(matches!(e, KbError::NotFound { .. }), "{e}");
    let e = err(
        &kb,
        kb.search(&SearchQuery {
            glob: Some("a{b".into()),
            ..q("abc")
        }),
    );
    assert!(matches!(e, KbError::InvalidGlob { .. }), "{e}");
    Ok(())
}

#[test]
fn search_skips_binary_and_huge_files() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "bin.dat", b"needle\n\0\x01\x02needle\n")?;
    // NUL far from the start: matches found before it must be discarded.
    let mut late = "needle\n".repeat(20_000).into_bytes();
    late.push(0);
    put(&kb, "late-bin.dat", &late)?;
    let mut huge = b"needle\n".to_vec();
    huge.resize(MAX_SEARCH_FILE_BYTES as usize + 1, b'x');
    put(&kb, "huge.txt", &huge)?;
    put(&kb, "ok.txt", "a needle\n")?;
    let res = kb.search(&SearchQuery {
        max_results: 1000,
        ..q("needle")
    })?;
    assert_eq!(hits(&res), ["ok.txt:1: a needle"]);
    assert_eq!(res.files_searched, 1);
    assert_eq!(res.files_skipped, 3);
    Ok(())
}

#[test]
fn search_stops_at_max_results() -> R {
    let (_d, kb) = setup()?;
    for i in 0..30 {
        put(&kb, &format!("context/f{i:02}.md"), "hit\nhit\n")?;
    }
    let res = kb.search(&SearchQuery {
        max_results: 10,
        ..q("hit")
    })?;
    assert_eq!(res.matches.len(), 10);
    assert!(res.truncated);
    let mut sorted = res.matches.clone();
    sorted.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    assert_eq!(sorted, res.matches);
    // Exactly max_results matches is not truncation.
    let res = kb.search(&SearchQuery {
        max_results: 60,
        ..q("hit")
    })?;
    assert_eq!(res.matches.len(), 60);
    assert!(!res.truncated);
    assert_eq!(res.files_searched, 30);
    // Out-of-range limits: 0 means the default, huge is clamped.
    let res = kb.search(&SearchQuery {
        max_results: 0,
        ..q("hit")
    })?;
    assert_eq!(res.matches.len(), 60);
    Ok(())
}

#[test]
fn search_rejects_bad_patterns_clearly() -> R {
    let (_d, kb) = setup()?;
    let e = err(&kb, kb.search(&q("")));
    assert!(matches!(e, KbError::EmptyPattern));
    let e = err(
        &kb,
        kb.search(&SearchQuery {
            regex: true,
            ..q("foo(bar")
        }),
    );
    assert!(matches!(e, KbError::InvalidPattern { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("`foo(bar`") && msg.contains("unclosed group"),
        "{msg}"
    );
    // The same text is fine as a literal.
    kb.search(&q("foo(bar"))?;
    Ok(())
}

#[test]
fn search_snippets_are_cut() -> R {
    let (_d, kb) = setup()?;
    put(
        &kb,
        "long.md",
        format!("{}needle{}\n", "é".repeat(300), "z".repeat(300)),
    )?;
    let res = kb.search(&q("needle"))?;
    let s = &res.matches[0].snippet;
    assert_eq!(s.chars().count(), SNIPPET_MAX_CHARS + 1);
    assert!(s.ends_with('…'));
    Ok(())
}

// ---------------------------------------------------------------- serde

#[test]
fn types_serialise_as_documented() -> R {
    assert_eq!(
        serde_json::to_string(&WriteMode::CreateNew)?,
        "\"create_new\""
    );
    assert_eq!(
        serde_json::from_str::<WriteMode>("\"append\"")?,
        WriteMode::Append
    );
    assert_eq!(WriteMode::default(), WriteMode::Overwrite);
    let opts: ListOptions = serde_json::from_str("{\"recursive\":true}")?;
    assert_eq!(opts.limit, DEFAULT_LIST_LIMIT);
    let query: SearchQuery = serde_json::from_str("{\"pattern\":\"x\"}")?;
    assert_eq!(query.max_results, DEFAULT_MAX_RESULTS);
    let entry = Entry {
        path: "a".into(),
        kind: EntryKind::Symlink,
        size: 0,
        modified: None,
        title: None,
    };
    assert_eq!(
        serde_json::to_value(&entry)?,
        serde_json::json!({"path": "a", "kind": "symlink", "size": 0})
    );
    let schema = serde_json::to_value(schemars::schema_for!(SearchResults))?;
    assert!(schema.to_string().contains("files_skipped"));
    let schema = serde_json::to_value(schemars::schema_for!(WriteMode))?;
    assert!(schema.to_string().contains("create_new"));
    Ok(())
}

#[test]
fn regex_anchors_match_line_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let kb = Kb::open(dir.path()).unwrap();
    kb.write("a.md", "alpha\nbeta\r\nomega\n", WriteMode::Overwrite)
        .unwrap();
    let q = SearchQuery {
        pattern: "^(alpha|beta|omega)$".into(),
        regex: true,
        ..SearchQuery::default()
    };
    let r = kb.search(&q).unwrap();
    let lines: Vec<u64> = r.matches.iter().map(|m| m.line).collect();
    assert_eq!(lines, [1, 2, 3]);
}

#[cfg(unix)]
#[test]
fn a_folder_swapped_for_a_link_after_a_write_is_checked_again() -> R {
    let (_d, kb) = setup()?;
    let outside = TempDir::new()?;
    // The first write checks `outbox` and remembers it; the second takes
    // the short way.
    kb.write("outbox/one.md", "1", WriteMode::Overwrite)?;
    kb.write("outbox/two.md", "2", WriteMode::Overwrite)?;
    assert_eq!(fs::read_to_string(kb.root().join("outbox/two.md"))?, "2");
    // Now the folder becomes a link out of the root.
    fs::rename(kb.root().join("outbox"), kb.root().join("old-outbox"))?;
    std::os::unix::fs::symlink(outside.path(), kb.root().join("outbox"))?;
    let e = err(&kb, kb.write("outbox/three.md", "3", WriteMode::Overwrite));
    assert!(matches!(e, KbError::OutsideRoot { .. }), "{e}");
    assert!(!outside.path().join("three.md").exists());
    // A remembered folder that is replaced by another real folder is
    // written through its new self, and a target that became a link is
    // resolved (and refused) as on the first write.
    fs::remove_file(kb.root().join("outbox"))?;
    fs::create_dir(kb.root().join("outbox"))?;
    kb.write("outbox/four.md", "4", WriteMode::Overwrite)?;
    assert_eq!(fs::read_to_string(kb.root().join("outbox/four.md"))?, "4");
    std::os::unix::fs::symlink(
        outside.path().join("five.md"),
        kb.root().join("outbox/five.md"),
    )?;
    let e = err(&kb, kb.write("outbox/five.md", "5", WriteMode::Overwrite));
    assert!(matches!(e, KbError::OutsideRoot { .. }), "{e}");
    assert!(!outside.path().join("five.md").exists());
    assert!(hidden_files(kb.root()).is_empty());
    Ok(())
}

#[test]
fn relative_and_joined_paths_agree() {
    use super::path::{join_rel, relative_display};
    let root = Path::new("/srv/kb");
    assert_eq!(relative_display(root, root).as_deref(), Some(""));
    assert_eq!(
        relative_display(root, Path::new("/srv/kb/a/b.md")).as_deref(),
        Some("a/b.md")
    );
    assert_eq!(relative_display(root, Path::new("/srv/kb/a/../b")), None);
    assert_eq!(relative_display(root, Path::new("/srv/kb-other/a")), None);
    assert_eq!(join_rel(root, ""), root);
    assert_eq!(join_rel(root, "a/b.md"), Path::new("/srv/kb/a/b.md"));
    for rel in ["a", "a/b.md", "x/y/z"] {
        assert_eq!(
            relative_display(root, &join_rel(root, rel)).as_deref(),
            Some(rel)
        );
    }
}

// ---------------------------------------------------------------- views

#[test]
fn a_subjects_view_holds_its_own_files_and_the_shared_folder() -> R {
    let (_d, kb) = setup()?;
    put(&kb, "context/team.md", "# Team\n")?;
    let alice = kb.view(Some("alice"), SharedAccess::ReadOnly)?;
    let bob = kb.view(Some("bob"), SharedAccess::ReadWrite)?;
    alice.write("outbox/a.md", "alice's", WriteMode::Overwrite)?;
    assert!(matches!(
        bob.read("outbox/a.md", 0, None),
        Err(KbError::NotFound { .. })
    ));
    assert!(matches!(
        alice.write("context/x.md", "no", WriteMode::Overwrite),
        Err(KbError::SharedReadOnly { .. })
    ));
    bob.write("context/x.md", "yes", WriteMode::Overwrite)?;
    assert_eq!(alice.read("context/x.md", 0, None)?.content, "yes");
    let names = |v: &KbView| -> Result<Vec<String>, KbError> {
        let l = v.list(
            "",
            &ListOptions {
                recursive: true,
                ..Default::default()
            },
        )?;
        Ok(l.entries.into_iter().map(|e| e.path).collect())
    };
    assert_eq!(
        names(&alice)?,
        [
            "context",
            "context/team.md",
            "context/x.md",
            "inbox",
            "outbox",
            "outbox/a.md",
            "sessions"
        ]
    );
    assert!(!names(&bob)?.contains(&"outbox/a.md".to_string()));
    let files: Vec<_> = alice.all_files()?.into_iter().map(|e| e.path).collect();
    assert_eq!(files, ["context/team.md", "context/x.md", "outbox/a.md"]);
    // The whole KB (no subject) holds both spaces on disk.
    let whole = kb.view(None, SharedAccess::ReadOnly)?;
    let on_disk = format!("subjects/{}/outbox/a.md", subject_folder("alice"));
    assert_eq!(whole.read(&on_disk, 0, None)?.content, "alice's");
    // Change notices: a subject hears of its own space and the shared folder.
    let own = format!("subjects/{}/outbox/a.md", subject_folder("alice"));
    assert!(alice.sees(&own));
    assert!(!bob.sees(&own));
    assert!(alice.sees("context/x.md") && bob.sees("context/x.md"));
    assert!(!bob.sees(&format!("subjects/{}", subject_folder("alice"))));
    assert!(whole.sees(&own));
    // What a direct notice names for a write through a view.
    assert_eq!(alice.disk_path("outbox/a.md"), own);
    assert_eq!(alice.disk_path("context/x.md"), "context/x.md");
    assert_eq!(whole.disk_path("outbox/a.md"), "outbox/a.md");
    Ok(())
}

#[test]
fn subject_folders_are_safe_names_that_never_collide() {
    let a = subject_folder("../../etc");
    assert!(!a.contains('/') && !a.contains(".."), "{a}");
    assert_ne!(subject_folder("a/b"), subject_folder("a_b"));
    assert!(subject_folder(&"x".repeat(500)).len() < 64);
}

// ---------------------------------------------------------------- swaps

/// The reproduction from the hardening issue: a folder written once, moved
/// outside and linked back, takes no more writes or reads.
#[test]
fn a_folder_swapped_for_a_link_outside_is_refused() -> R {
    let (_d, kb) = setup()?;
    let outside = tempfile::tempdir()?;
    kb.write("notes/sub/a.md", "a", WriteMode::Overwrite)?;
    let moved = outside.path().join("notes");
    fs::rename(kb.root().join("notes"), &moved)?;
    std::os::unix::fs::symlink(&moved, kb.root().join("notes"))?;
    let e = err(&kb, kb.write("notes/sub/b.md", "b", WriteMode::Overwrite));
    assert!(matches!(e, KbError::OutsideRoot { .. }), "{e}");
    assert!(!moved.join("sub/b.md").exists(), "nothing landed outside");
    assert!(kb.read("notes/sub/a.md", 0, None).is_err());
    // The same with a relative link leading out.
    fs::remove_file(kb.root().join("notes"))?;
    let up = pathdiff(&moved, kb.root());
    std::os::unix::fs::symlink(&up, kb.root().join("notes"))?;
    assert!(kb.write("notes/sub/c.md", "c", WriteMode::Append).is_err());
    assert!(!moved.join("sub/c.md").exists());
    Ok(())
}

/// `target` relative to `from` (both absolute), by `..`s to the root.
fn pathdiff(target: &Path, from: &Path) -> std::path::PathBuf {
    let mut up = std::path::PathBuf::new();
    for _ in from.components().skip(1) {
        up.push("..");
    }
    up.join(target.strip_prefix("/").unwrap_or(target))
}

/// Another process flips a folder between a real one and a link to outside
/// while thousands of reads, writes, listings and searches run: none of them
/// reaches the outside folder.
#[test]
fn a_racing_link_flipper_never_gets_an_operation_outside() -> R {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_d, kb) = setup()?;
    let outside = tempfile::tempdir()?;
    fs::write(outside.path().join("secret.md"), "OUTSIDE SECRET\n")?;
    let flip = kb.root().join("flip");
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (flip, target, stop) = (flip.clone(), outside.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::remove_dir_all(&flip);
                let _ = fs::remove_file(&flip);
                let _ = std::os::unix::fs::symlink(&target, &flip);
                let _ = fs::remove_file(&flip);
                let _ = fs::create_dir(&flip);
                let _ = fs::write(flip.join("secret.md"), "inside\n");
                flips += 1;
            }
            flips
        })
    };
    let mut escapes = 0;
    let ops = 4000;
    for i in 0..ops {
        match i % 4 {
            0 => {
                let _ = kb.write("flip/w.md", "written\n", WriteMode::Overwrite);
            }
            1 => {
                if kb
                    .read("flip/secret.md", 0, None)
                    .is_ok_and(|c| c.content.contains("OUTSIDE"))
                {
                    escapes += 1;
                }
            }
            2 => {
                // A listing shows names only (never content); it must not
                // fail in a way that panics, and an append must stay inside.
                let _ = kb.list("flip", &ListOptions::default());
                let _ = kb.write("flip/a.md", "x", WriteMode::Append);
            }
            _ => {
                if i % 40 == 3
                    && kb
                        .search(&SearchQuery {
                            pattern: "OUTSIDE".into(),
                            ..Default::default()
                        })
                        .is_ok_and(|r| !r.matches.is_empty())
                {
                    escapes += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().map_err(|_| "the flipper panicked")?;
    let outside_names: Vec<_> = fs::read_dir(outside.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(outside_names, ["secret.md"], "a write landed outside");
    assert_eq!(
        fs::read_to_string(outside.path().join("secret.md"))?,
        "OUTSIDE SECRET\n"
    );
    assert_eq!(
        escapes, 0,
        "{escapes} of {ops} operations read outside ({flips} flips)"
    );
    assert!(flips > 0);
    Ok(())
}
