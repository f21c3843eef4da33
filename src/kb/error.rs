//! The single error type of the knowledge base.
//!
//! Messages are read by a model or a person driving the MCP tools, so each one
//! says what was wrong and what to do instead. They only ever name the
//! KB-relative path the caller gave: the absolute location of the knowledge
//! base on this machine is nobody's business and would leak into transcripts.

use std::io;

/// Everything that can go wrong in a knowledge-base operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KbError {
    /// A subject without `[auth] context_writers` wrote to the shared folder.
    #[error(
        "`{path}` is in `context/`, which every user of this server shares and only the \
         subjects named in `[auth] context_writers` may change; write to a folder of your own \
         instead (e.g. `notes/…`), or ask the server's operator to add you"
    )]
    SharedReadOnly {
        /// The path as given.
        path: String,
    },

    /// The path was empty (or `.`) where a file is required.
    #[error(
        "a file path is required here, but the path was empty (the knowledge-base root); \
         give a path such as `context/notes.md`, or use kb_list to see what exists"
    )]
    EmptyPath,

    /// The path contained a `..` component.
    #[error(
        "path `{path}` contains a `..` component; paths must stay inside the knowledge base, \
         so give the path from the knowledge-base root without `..` (e.g. `context/notes.md`)"
    )]
    Traversal {
        /// The path as given.
        path: String,
    },

    /// The path was absolute (leading `/` or `\`, or a drive prefix such as `C:`).
    #[error(
        "path `{path}` is absolute; knowledge-base paths are relative to the knowledge-base \
         root, so drop the leading `/`, `\\` or drive letter (e.g. `inbox/task.md`)"
    )]
    Absolute {
        /// The path as given.
        path: String,
    },

    /// The path contained a NUL byte.
    #[error("the path contains a NUL byte, which no file name can contain; remove it")]
    NulByte,

    /// The path was longer than [`super::MAX_PATH_BYTES`].
    #[error("the path is {len} bytes long; the limit is {limit} bytes, so use a shorter path")]
    PathTooLong {
        /// Length of the given path in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// A path component is not a plain file or folder name on this platform.
    #[error(
        "path `{path}` has a component `{component}` that is not a plain file or folder name; \
         use ordinary names separated by `/`"
    )]
    InvalidComponent {
        /// The path as given.
        path: String,
        /// The offending component.
        component: String,
    },

    /// A symbolic link on the path leads outside the knowledge base (or nowhere).
    #[error(
        "path `{path}` goes through a symbolic link that leads outside the knowledge base \
         (or to nothing, or is absolute); only files inside the knowledge base can be used, \
         through relative links, so pick another path or make the link relative"
    )]
    OutsideRoot {
        /// The path as given.
        path: String,
    },

    /// Nothing exists at the path.
    #[error("`{path}` does not exist in the knowledge base; use kb_list to see what exists")]
    NotFound {
        /// The path as given.
        path: String,
    },

    /// A file operation was asked of a folder.
    #[error(
        "`{path}` is a folder, not a file; use kb_list to see its contents and give the path \
         of a file inside it"
    )]
    IsDirectory {
        /// The path as given.
        path: String,
    },

    /// A folder was expected (e.g. a parent folder) but a file is in the way.
    #[error("a part of `{path}` is an existing file, not a folder; choose a different path")]
    NotADirectory {
        /// The path as given.
        path: String,
    },

    /// The file is not UTF-8 text.
    #[error(
        "`{path}` is a binary (non-UTF-8) file and cannot be read as text; fetch it as the MCP \
         resource `kb://{path}` instead"
    )]
    Binary {
        /// The path as given.
        path: String,
    },

    /// The file is too large to return whole.
    #[error(
        "`{path}` is {size} bytes, more than the {limit}-byte limit for fetching a whole file; \
         read it in chunks with kb_read (offset/limit) instead"
    )]
    TooLarge {
        /// The path as given.
        path: String,
        /// Size of the file in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// The content to write (or the appended result) is over [`super::MAX_WRITE_BYTES`].
    #[error(
        "writing `{path}` would make it {size} bytes, more than the {limit}-byte limit; \
         split the content over several files"
    )]
    ContentTooLarge {
        /// The path as given.
        path: String,
        /// Size the file would have had, in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// `create_new` was asked for a path that already exists.
    #[error(
        "`{path}` already exists and mode `create_new` never replaces a file; use mode \
         `overwrite` or `append`, or pick another name"
    )]
    AlreadyExists {
        /// The path as given.
        path: String,
    },

    /// The search pattern was empty.
    #[error(
        "the search pattern is empty; give some text (or a regex with `regex: true`) to look for"
    )]
    EmptyPattern,

    /// The search pattern could not be compiled.
    #[error(
        "the search pattern `{pattern}` is invalid: {message}; fix it, or search with \
         `regex: false` to match the text literally"
    )]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// The regex engine's explanation.
        message: String,
    },

    /// The glob filter could not be compiled.
    #[error(
        "the glob `{glob}` is invalid: {message}; use a pattern such as `*.md` or `context/**/*.md`"
    )]
    InvalidGlob {
        /// The glob as given.
        glob: String,
        /// The glob compiler's explanation.
        message: String,
    },

    /// An operating-system error that is not one of the cases above.
    #[error("could not {action} `{path}`: {message}")]
    Io {
        /// What was being done, e.g. "read" or "create the folder for".
        action: &'static str,
        /// The path as given (never the absolute path).
        path: String,
        /// The OS error, stripped of any path.
        message: String,
    },
}

impl KbError {
    /// A short, stable identifier for the kind of error, for callers that map
    /// errors to protocol codes (e.g. "invalid params" vs "internal error")
    /// without matching on every variant.
    pub fn code(&self) -> &'static str {
        match self {
            KbError::SharedReadOnly { .. } => "shared_read_only",
            KbError::EmptyPath => "empty_path",
            KbError::Traversal { .. } => "traversal",
            KbError::Absolute { .. } => "absolute_path",
            KbError::NulByte => "nul_byte",
            KbError::PathTooLong { .. } => "path_too_long",
            KbError::InvalidComponent { .. } => "invalid_component",
            KbError::OutsideRoot { .. } => "outside_root",
            KbError::NotFound { .. } => "not_found",
            KbError::IsDirectory { .. } => "is_directory",
            KbError::NotADirectory { .. } => "not_a_directory",
            KbError::Binary { .. } => "binary",
            KbError::TooLarge { .. } => "too_large",
            KbError::ContentTooLarge { .. } => "content_too_large",
            KbError::AlreadyExists { .. } => "already_exists",
            KbError::EmptyPattern => "empty_pattern",
            KbError::InvalidPattern { .. } => "invalid_pattern",
            KbError::InvalidGlob { .. } => "invalid_glob",
            KbError::Io { .. } => "io",
        }
    }

    /// True when the error is the caller's to fix (bad path, missing file,
    /// bad pattern, ...) rather than a failure of this machine's file system.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, KbError::Io { .. })
    }

    /// Maps an I/O error on `path` to the most helpful variant. `action` is a
    /// verb phrase used only for the generic fallback.
    pub(crate) fn from_io(err: &io::Error, action: &'static str, path: &str) -> KbError {
        let path = path.to_owned();
        if is_escape(err) {
            return KbError::OutsideRoot { path };
        }
        match err.kind() {
            io::ErrorKind::NotFound => KbError::NotFound { path },
            io::ErrorKind::IsADirectory => KbError::IsDirectory { path },
            io::ErrorKind::NotADirectory => KbError::NotADirectory { path },
            _ => KbError::Io {
                action,
                path,
                message: io_message(err),
            },
        }
    }
}

/// cap-std's refusal of a path that leads outside the root (through `..` or
/// a symbolic link): `PermissionDenied` with this message, or, from
/// `openat2(RESOLVE_BENEATH)`, `EXDEV`.
fn is_escape(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EXDEV)
        || (err.kind() == io::ErrorKind::PermissionDenied
            && err.raw_os_error().is_none()
            && err.to_string().contains("outside"))
}

/// The text of an I/O error without any file path in it.
///
/// `std` errors never carry paths, but `tempfile` wraps its errors with the
/// (absolute) path of the temp file, so for anything that is not a plain OS
/// error we fall back to the error kind's generic description.
pub(crate) fn io_message(err: &io::Error) -> String {
    if let Some(code) = err.raw_os_error() {
        return io::Error::from_raw_os_error(code).to_string();
    }
    let Some(custom) = err.get_ref() else {
        return err.to_string();
    };
    // A custom payload may embed a path: look through its source chain for
    // the underlying OS error, whose text is path-free.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(custom);
    while let Some(e) = source {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return io::Error::from_raw_os_error(code).to_string();
        }
        source = e.source();
    }
    err.kind().to_string()
}
