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
    /// One line, always: a line break in the message (a YAML error can carry
    /// one) is written as `\n`, so editors and CI logs still see
    /// `file:line:col: ...` at the start of every diagnostic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        write!(
            f,
            "{}:{}:{}: {}: {}",
            one_line(&file),
            self.line,
            self.column,
            self.severity,
            one_line(&self.message)
        )
    }
}

fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        s.replace("\r\n", "\\n").replace(['\n', '\r'], "\\n").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnostic_is_one_line() {
        let d = Diagnostic::error("a\nb.agent.md", 3, 1, "first\r\nsecond\nthird");
        let s = d.to_string();
        assert_eq!(s, "a\\nb.agent.md:3:1: error: first\\nsecond\\nthird");
        assert_eq!(s.lines().count(), 1);
    }
}
