//! How `dispatch run` answers the questions of tools marked `ask`: from
//! its flags (`--approve TOOL`, `--deny-all`), else from the person at the
//! terminal, else not at all (the call is refused and the model told why).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::engine::approval::{Approver, FixedAnswers, Question};
use crate::task::{Approval, Decision};

/// The approver `dispatch run` installs for its flags and terminal.
pub fn for_run(approve: &[String], deny_all: bool) -> Arc<dyn Approver> {
    if deny_all {
        return Arc::new(FixedAnswers {
            approve: Vec::new(),
            by: "--deny-all".into(),
        });
    }
    if !approve.is_empty() {
        return Arc::new(FixedAnswers {
            approve: approve.to_vec(),
            by: "--approve".into(),
        });
    }
    if std::io::stderr().is_terminal() && std::fs::File::open("/dev/tty").is_ok() {
        return Arc::new(Terminal {
            one_at_a_time: tokio::sync::Mutex::new(()),
        });
    }
    Arc::new(NoOne)
}

/// Asks on the controlling terminal, one question at a time.
struct Terminal {
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Approver for Terminal {
    fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
        Box::pin(async move {
            let _turn = self.one_at_a_time.lock().await;
            let text = q.text();
            let shown = text.clone();
            let answer = tokio::task::spawn_blocking(move || prompt(&shown)).await;
            let decision = match answer {
                Ok(Ok(Some(line))) if matches!(line.trim(), "y" | "Y" | "yes" | "YES") => {
                    Decision::Accepted
                }
                Ok(Ok(Some(_))) => Decision::Declined,
                _ => Decision::Cancelled,
            };
            Approval {
                question: text,
                decision,
                by: Some("tty".into()),
                via: "tty".into(),
                note: None,
            }
        })
    }
}

/// Ask on /dev/tty (not stdin, which may carry the input); `None` at EOF.
fn prompt(text: &str) -> std::io::Result<Option<String>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let mut out = &tty;
    write!(out, "\n{text} [y/N] ")?;
    out.flush()?;
    let mut line = String::new();
    match std::io::BufReader::new(&tty).read_line(&mut line)? {
        0 => Ok(None),
        _ => Ok(Some(line)),
    }
}

/// No flag and no terminal: every question is refused.
struct NoOne;

impl Approver for NoOne {
    fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
        Box::pin(std::future::ready(Approval::unanswered(
            &q.text(),
            "none",
            "dispatch run has no terminal to ask on: pass --approve TOOL (or --approve '*') to allow it, or --deny-all",
        )))
    }
}
