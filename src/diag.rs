//! Diagnostics: problems found in files the user wrote, with a position.
//!
//! Every problem in an agent file or config file is a [`Diagnostic`], printed in
//! the `file:line:col: severity: message` form that editors and CI logs can jump
//! to. Errors stop the one file from loading; warnings never do.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Serialize;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The file is still used; something in it is ignored or unusual.
    Warning,
    /// The file (or the agent in it) cannot be used as written.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem in one file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Diagnostic {
    /// The file, as given to the loader (relative paths stay relative).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and, where possible, what to write instead.
    pub message: String,
}

impl Diagnostic {
    /// An error at `line:column` of `file`.
    pub fn error(
        file: impl Into<PathBuf>,
        line: usize,
        column: usize,
        msg: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Error, file, line, column, msg)
    }

    /// A warning at `line:column` of `file`.
    pub fn warning(
        file: impl Into<PathBuf>,
        line: usize,
        column: usize,
        msg: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, file, line, column, msg)
    }

    fn new(
        severity: Severity,
        file: impl Into<PathBuf>,
        line: usize,
        column: usize,
        msg: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line: line.max(1),
            column: column.max(1),
            severity,
            message: msg.into(),
        }
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.severity,
            self.message
        )
    }
}
