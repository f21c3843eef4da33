//! How `dispatch run` and `dispatch workflow run` answer the questions of
//! tools marked `ask`: from their flags (`--approve TOOL`, `--deny-all`),
//! else from the person at the terminal, else not at all (the call is
//! refused and the model told why).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::cli::ApprovalArgs;
use crate::engine::approval::{Approver, FixedAnswers, Question};
use crate::task::{Approval, Decision};

/// The approver the command installs for its flags and terminal.
pub fn for_run(args: &ApprovalArgs) -> Arc<dyn Approver> {
    if args.deny_all {
        return Arc::new(FixedAnswers::none("--deny-all"));
    }
    if !args.approve.is_empty() {
        return Arc::new(FixedAnswers::only(args.approve.clone(), "--approve"));
    }
    if std::io::stderr().is_terminal() && std::fs::File::open("/dev/tty").is_ok() {
        return Arc::new(Terminal {
            lines: tokio::sync::Mutex::new(None),
        });
    }
    Arc::new(NoOne)
}

/// What the terminal's reader thread sends: a line, the end of input, or
/// why it could not read.
type Line = Result<Option<String>, String>;

/// Asks on the controlling terminal, one question at a time.
///
/// The terminal is read by one thread of its own, started at the first
/// question and left to the process's end: a read that a timeout or Ctrl-C
/// abandons is not a blocked task the runtime would wait for at exit, and a
/// line typed for a question that is gone is dropped, not taken as the
/// answer to the next one.
struct Terminal {
    /// The reader's lines, held by the question being asked.
    lines: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Line>>>,
}

impl Approver for Terminal {
    fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
        Box::pin(async move {
            let text = q.text();
            let mut lines = self.lines.lock().await;
            let answer = match reader(&mut lines) {
                Ok(rx) => read_answer(rx, &text).await,
                Err(e) => Err(e),
            };
            let (decision, note) = match answer {
                Ok(Some(line)) if is_yes(&line) => (Decision::Accepted, None),
                Ok(Some(_)) => (Decision::Declined, None),
                Ok(None) => (Decision::Cancelled, Some("the terminal closed".to_string())),
                Err(e) => (
                    Decision::Cancelled,
                    Some(format!("the terminal could not be read: {e}")),
                ),
            };
            Approval {
                question: text,
                decision,
                by: Some("tty".into()),
                via: "tty".into(),
                note,
            }
        })
    }
}

fn is_yes(line: &str) -> bool {
    matches!(line.trim(), "y" | "Y" | "yes" | "Yes" | "YES")
}

/// The reader's lines, starting the reader on first use.
fn reader(
    slot: &mut Option<mpsc::UnboundedReceiver<Line>>,
) -> Result<&mut mpsc::UnboundedReceiver<Line>, String> {
    if slot.is_none() {
        *slot = Some(spawn_reader()?);
    }
    slot.as_mut().ok_or_else(|| "no reader".to_string())
}

/// Write the question, drop lines typed before it, and wait for the next.
async fn read_answer(rx: &mut mpsc::UnboundedReceiver<Line>, text: &str) -> Line {
    while rx.try_recv().is_ok() {}
    let shown = format!("\n{text} [y/N] ");
    tokio::task::spawn_blocking(move || write_tty(&shown))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    rx.recv().await.unwrap_or(Ok(None))
}

fn write_tty(text: &str) -> std::io::Result<()> {
    let mut tty = std::fs::OpenOptions::new().write(true).open("/dev/tty")?;
    tty.write_all(text.as_bytes())?;
    tty.flush()
}

/// A thread that reads /dev/tty (not stdin, which may carry the input)
/// line by line until it ends or its receiver is gone.
fn spawn_reader() -> Result<mpsc::UnboundedReceiver<Line>, String> {
    let tty = std::fs::File::open("/dev/tty").map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("dispatch-tty".into())
        .spawn(move || {
            let mut input = std::io::BufReader::new(tty);
            loop {
                let mut line = String::new();
                let read = match input.read_line(&mut line) {
                    Ok(0) => Ok(None),
                    Ok(_) => Ok(Some(line)),
                    Err(e) => Err(e.to_string()),
                };
                let more = matches!(read, Ok(Some(_)));
                if tx.send(read).is_err() || !more {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(rx)
}

/// No flag and no terminal: every question is refused.
struct NoOne;

impl Approver for NoOne {
    fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
        Box::pin(std::future::ready(Approval::unanswered(
            &q.text(),
            "none",
            "there is no terminal to ask on: pass --approve TOOL (or --approve '*') to allow it, or --deny-all",
        )))
    }
}
