//! KB-relative path validation and resolution.
//!
//! Every path that reaches the knowledge base comes from a model or a remote
//! client, so it is treated as hostile: it is first checked lexically (no
//! `..`, nothing absolute, no NUL, bounded length) and then resolved against
//! the file system so that a symbolic link cannot carry it outside the root.
//! Comparisons are made on canonical `Path`s component by component, never on
//! strings, so `/kb-other` is not mistaken for a child of `/kb`.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::KbError;

/// Longest path (in bytes, as given) that is accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// A lexically validated KB-relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<String>,
}

impl RelPath {
    /// Validates `rel` without touching the file system.
    ///
    /// Both `/` and `\` separate components, because a path written for
    /// Windows (`..\\x`) must not slip through as one odd file name here and
    /// then be reinterpreted elsewhere. Empty and `.` components are dropped,
    /// so `""`, `"."` and `"./"` all denote the root.
    pub fn parse(rel: &str) -> Result<RelPath, KbError> {
        if rel.len() > MAX_PATH_BYTES {
            return Err(KbError::PathTooLong {
                len: rel.len(),
                limit: MAX_PATH_BYTES,
            });
        }
        if rel.contains('\0') {
            return Err(KbError::NulByte);
        }
        if rel.starts_with(['/', '\\']) || has_drive_prefix(rel) {
            return Err(KbError::Absolute {
                path: rel.to_owned(),
            });
        }
        let mut parts = Vec::new();
        for part in rel.split(['/', '\\']) {
            match part {
                "" | "." => {}
                ".." => {
                    return Err(KbError::Traversal {
                        path: rel.to_owned(),
                    });
                }
                _ => {
                    // On Windows a component such as `C:x` parses as a drive
                    // prefix and would replace the whole path when joined; on
                    // any platform, demand exactly one ordinary component.
                    let mut comps = Path::new(part).components();
                    let plain = matches!(comps.next(), Some(Component::Normal(n)) if n == part)
                        && comps.next().is_none();
                    if !plain {
                        return Err(KbError::InvalidComponent {
                            path: rel.to_owned(),
                            component: part.to_owned(),
                        });
                    }
                    parts.push(part.to_owned());
                }
            }
        }
        Ok(RelPath { parts })
    }

    /// True for the knowledge-base root itself.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The normalised form with `/` separators; empty for the root.
    pub fn display(&self) -> String {
        self.parts.join("/")
    }

    /// The components, in order.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// The relative path to hand to a handle on the root (`.` for the root).
    pub fn as_path(&self) -> PathBuf {
        if self.parts.is_empty() {
            return PathBuf::from(".");
        }
        self.parts.iter().collect()
    }
}

/// `C:` or `c:...` at the start: a Windows drive prefix, absolute or
/// drive-relative, either way not ours.
fn has_drive_prefix(rel: &str) -> bool {
    let b = rel.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Resolves a validated path against the canonical `root`.
///
/// Walks the components one by one: any symbolic link met on the way must
/// canonicalise to a location inside `root` (a dangling link is refused, as
/// writing through it could create a file anywhere). The existing part of the
/// returned path is canonical, i.e. free of links, and the rest is appended
/// verbatim, so whatever the caller creates there lands inside the root.
pub fn resolve_in(root: &Path, rel: &RelPath) -> Result<PathBuf, KbError> {
    let outside = || KbError::OutsideRoot {
        path: rel.display(),
    };
    let mut cur = root.to_path_buf();
    let mut rest: &[String] = &[];
    for (i, part) in rel.parts.iter().enumerate() {
        let next = cur.join(part);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => match fs::canonicalize(&next) {
                Ok(target) if target.starts_with(root) => cur = target,
                // Outside, dangling or looping: refuse rather than guess.
                _ => return Err(outside()),
            },
            Ok(_) => cur = next,
            Err(_) => {
                // Missing (to be created by a write), or unreachable (e.g. a
                // parent is a file): the operation itself reports that.
                rest = &rel.parts[i..];
                break;
            }
        }
    }
    // Belt and braces: the existing part must canonicalise inside the root
    // even if something unusual (a junction, a racing rename) got past the
    // per-component checks.
    match fs::canonicalize(&cur) {
        Ok(canon) if canon.starts_with(root) => cur = canon,
        Ok(_) => return Err(outside()),
        Err(e) => return Err(KbError::from_io(&e, "resolve", &rel.display())),
    }
    for part in rest {
        cur.push(part);
    }
    Ok(cur)
}

/// The KB-relative form (with `/` separators) of `abs`, a path inside `root`
/// (`""` for the root itself). Returns `None` for paths outside the root, and
/// for those with a `..` after it, which this cannot place without the file
/// system.
pub fn relative_display(root: &Path, abs: &Path) -> Option<String> {
    let rel = abs.strip_prefix(root).ok()?;
    let mut out = String::new();
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return None;
        };
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&name.to_string_lossy());
    }
    Some(out)
}

/// The path of the KB-relative `rel` (`/` separators, already valid) under
/// `root`, as named: links in it are not resolved (see [`resolve_in`] for that).
pub fn join_rel(root: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .filter(|c| !c.is_empty())
        .fold(root.to_path_buf(), |p, c| p.join(c))
}

/// Orders KB-relative paths component by component, so that a folder's
/// contents sort directly after the folder (`a`, `a/b`, `a.md`) as in a tree.
pub fn cmp_paths(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// True for dot-prefixed names: hidden files and our own temp files.
pub fn is_hidden_name(name: &str) -> bool {
    name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(rel: &str) -> KbError {
        match RelPath::parse(rel) {
            Ok(p) => panic!("{rel:?} was accepted as {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_and_normalises() -> Result<(), KbError> {
        assert_eq!(RelPath::parse("a/b.md")?.display(), "a/b.md");
        assert_eq!(RelPath::parse("a\\b.md")?.display(), "a/b.md");
        assert_eq!(RelPath::parse("./a//b/./c")?.display(), "a/b/c");
        assert!(RelPath::parse("")?.is_root());
        assert!(RelPath::parse(".")?.is_root());
        assert!(RelPath::parse("./")?.is_root());
        assert_eq!(RelPath::parse("...")?.display(), "...");
        assert_eq!(RelPath::parse("a..b")?.display(), "a..b");
        assert_eq!(RelPath::parse("notes: C.md")?.display(), "notes: C.md");
        Ok(())
    }

    #[test]
    fn refuses_traversal_in_every_form() {
        for rel in [
            "..",
            "../x",
            "a/../b",
            "a/../../x",
            "..\\x",
            "..\\..\\x",
            "a\\..\\b",
            "a/..",
        ] {
            assert!(matches!(err(rel), KbError::Traversal { .. }), "{rel}");
        }
    }

    #[test]
    fn refuses_absolute_paths() {
        for rel in [
            "/etc/passwd",
            "\\x",
            "\\\\server\\share",
            "C:\\x",
            "c:x",
            "C:",
            "z:/y",
        ] {
            assert!(matches!(err(rel), KbError::Absolute { .. }), "{rel}");
        }
    }

    #[test]
    fn refuses_nul_and_long_paths() {
        assert!(matches!(err("a\0b"), KbError::NulByte));
        let long = "a/".repeat(MAX_PATH_BYTES / 2 + 1);
        assert!(matches!(err(&long), KbError::PathTooLong { .. }));
        let ok = "a".repeat(200);
        assert!(RelPath::parse(&ok).is_ok());
    }

    #[test]
    fn messages_quote_the_given_path() {
        let msg = err("../secret").to_string();
        assert!(msg.contains("`../secret`"), "{msg}");
        assert!(msg.contains(".."), "{msg}");
        let msg = err("/etc/passwd").to_string();
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn orders_like_a_tree() {
        let mut v = vec!["a.md", "a/b", "a", "b", "a/a"];
        v.sort_by(|x, y| cmp_paths(x, y));
        assert_eq!(v, ["a", "a/a", "a/b", "a.md", "b"]);
    }
}
