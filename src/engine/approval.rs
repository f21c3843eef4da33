//! Approvals: a tool an agent file marks `ask` (`permissions: {kb_write:
//! ask, github/*: ask}`) runs only after a human approves that call.
//!
//! The engine does not know how to reach a human: whoever starts a tree
//! registers an [`Approver`] for its root (the MCP layer one that asks its
//! client, `dispatch run` one that answers from flags or a TTY), and every
//! task of the tree asks it. With none registered, or no answer within
//! `[limits] approval_timeout_secs`, the call is refused and the model is
//! told why: a question never hangs a task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::task::{Approval, Decision, TaskId};

/// The longest arguments a question quotes.
const MAX_QUOTED_ARGS: usize = 2_000;

/// One question: may this call run?
#[derive(Debug, Clone)]
pub struct Question {
    /// The task whose model made the call.
    pub task_id: TaskId,
    /// The root of its tree.
    pub root_id: TaskId,
    /// The call's id (unique within the task).
    pub call_id: String,
    /// The agent that wants the tool.
    pub agent: String,
    /// The tool, as the model named it.
    pub tool: String,
    /// The arguments, as the model wrote them.
    pub arguments: String,
}

impl Question {
    /// The question as a human reads it.
    pub fn text(&self) -> String {
        format!(
            "The agent {} (task {}) wants to call {} with {}. Allow this call?",
            self.agent,
            self.task_id,
            self.tool,
            crate::provider::clip(&self.arguments, MAX_QUOTED_ARGS)
        )
    }
}

/// Someone who can answer questions (through a client, flags, a terminal).
pub trait Approver: Send + Sync {
    /// Ask; the answer says who gave it and how. Never fails: an approver
    /// that cannot ask answers [`Decision::Unanswered`] with the reason.
    fn ask<'a>(&'a self, question: &'a Question) -> BoxFuture<'a, Approval>;
}

/// The approvers of the trees this process drives, and the one for trees
/// that have none.
#[derive(Default)]
pub struct Approvers {
    by_root: Mutex<HashMap<TaskId, Arc<dyn Approver>>>,
    fallback: OnceLock<Arc<dyn Approver>>,
}

impl Approvers {
    /// Questions of the tree rooted at `root_id` go to `approver` (until the
    /// root's driver ends).
    pub fn set(&self, root_id: &str, approver: Arc<dyn Approver>) {
        self.lock().insert(root_id.to_string(), approver);
    }

    /// The tree of `root_id` has no approver of its own any more.
    pub fn forget(&self, root_id: &str) {
        self.lock().remove(root_id);
    }

    /// Questions of trees without an approver go to `approver` (the CLI's).
    pub fn set_fallback(&self, approver: Arc<dyn Approver>) {
        let _ = self.fallback.set(approver);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<dyn Approver>>> {
        self.by_root.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask whoever can answer for the question's tree, within `timeout`.
    pub async fn ask(&self, question: &Question, timeout: Duration) -> Approval {
        let approver = self
            .lock()
            .get(&question.root_id)
            .cloned()
            .or_else(|| self.fallback.get().cloned());
        let text = question.text();
        let Some(approver) = approver else {
            return Approval::unanswered(
                &text,
                "none",
                "no client that can be asked is connected to this task (it was started by a client that has gone, or before a restart)",
            );
        };
        match tokio::time::timeout(timeout, approver.ask(question)).await {
            Ok(a) => a,
            Err(_) => Approval::unanswered(
                &text,
                "timeout",
                format!(
                    "no answer within {} ([limits] approval_timeout_secs)",
                    crate::provider::human_duration_secs(timeout)
                ),
            ),
        }
    }
}

/// What the model is told when a call is not approved.
pub fn refusal(tool: &str, approval: &Approval) -> String {
    let why = match approval.decision {
        Decision::Accepted => return String::new(),
        Decision::Declined => "the human declined it".to_string(),
        Decision::Cancelled => "the human dismissed the question without approving".to_string(),
        Decision::Unanswered => format!(
            "no one could approve it: {}",
            approval.note.as_deref().unwrap_or("no answer")
        ),
    };
    format!(
        "{tool} was not run: it needs a human's approval for each call and {why}. Do without it, or explain in your answer what you would have done."
    )
}

/// Answers from a fixed list, as `dispatch run --approve TOOL` and
/// `--deny-all` do.
pub struct FixedAnswers {
    /// Tools (as the model names them) approved without asking.
    pub approve: Vec<String>,
    /// Who answers for the record (`--approve`).
    pub by: String,
}

impl Approver for FixedAnswers {
    fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
        let yes = self.approve.iter().any(|t| t == &q.tool || t == "*");
        Box::pin(std::future::ready(Approval {
            question: q.text(),
            decision: if yes {
                Decision::Accepted
            } else {
                Decision::Declined
            },
            by: Some(self.by.clone()),
            via: "flag".into(),
            note: None,
        }))
    }
}

/// An approver handed to [`crate::engine::Submit`] or a workflow's
/// [`crate::engine::RunRequest`]: it answers the questions of that tree.
#[derive(Clone)]
pub struct AskVia(pub Arc<dyn Approver>);

impl std::fmt::Debug for AskVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AskVia(..)")
    }
}

/// A question that waits for an answer from outside the call that caused
/// it (a 2026-07-28 client's `tasks/update`, or the retry of a `tools/call`
/// that answered `input_required`), by its key.
#[derive(Debug, Clone)]
pub struct Open {
    /// The key the answer names (`<task id>.<call id>`).
    pub key: String,
    /// The question.
    pub question: Question,
}

struct Waiter {
    open: Open,
    answer: tokio::sync::oneshot::Sender<Approval>,
}

/// The questions of this process's trees that wait for an answer, per root.
/// Each is removed when it is answered or its asker stops waiting.
pub struct Inbox {
    by_root: Mutex<HashMap<TaskId, Vec<Waiter>>>,
    /// Bumped whenever a question is opened, so a waiting call can answer
    /// `input_required` at once.
    opened: tokio::sync::watch::Sender<u64>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            by_root: Mutex::new(HashMap::new()),
            opened: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Why an answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// No such question waits (it was answered, timed out, or never asked).
    #[error(
        "no question `{0}` waits for an answer (it was answered already, timed out, or the key is wrong)"
    )]
    NotOpen(String),
}

impl Question {
    /// The key an answer to this question names.
    pub fn key(&self) -> String {
        format!("{}.{}", self.task_id, self.call_id)
    }
}

/// A question's place in the [`Inbox`]: waits for its answer, and takes the
/// question out when dropped unanswered.
pub struct Ticket<'a> {
    inbox: &'a Inbox,
    root: TaskId,
    key: String,
    answer: tokio::sync::oneshot::Receiver<Approval>,
}

impl Ticket<'_> {
    /// The answer (pending forever if none comes: bound it by a timeout).
    pub async fn answer(&mut self) -> Approval {
        match (&mut self.answer).await {
            Ok(a) => a,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.inbox.close(&self.root, &self.key);
    }
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Vec<Waiter>>> {
        self.by_root.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put `question` in the inbox until it is answered or the ticket drops.
    pub fn open(&self, question: &Question) -> Ticket<'_> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key = question.key();
        self.lock()
            .entry(question.root_id.clone())
            .or_default()
            .push(Waiter {
                open: Open {
                    key: key.clone(),
                    question: question.clone(),
                },
                answer: tx,
            });
        self.opened.send_modify(|n| *n = n.wrapping_add(1));
        Ticket {
            inbox: self,
            root: question.root_id.clone(),
            key,
            answer: rx,
        }
    }

    fn close(&self, root: &str, key: &str) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(root) {
            list.retain(|w| w.open.key != key);
            if list.is_empty() {
                map.remove(root);
            }
        }
    }

    /// The questions of the tree rooted at `root` that wait, oldest first.
    pub fn questions(&self, root: &str) -> Vec<Open> {
        self.lock()
            .get(root)
            .map(|l| l.iter().map(|w| w.open.clone()).collect())
            .unwrap_or_default()
    }

    /// Answer the question `key` of the tree rooted at `root`.
    pub fn answer(&self, root: &str, key: &str, approval: Approval) -> Result<(), AnswerError> {
        let mut map = self.lock();
        let list = map
            .get_mut(root)
            .ok_or_else(|| AnswerError::NotOpen(key.to_string()))?;
        let at = list
            .iter()
            .position(|w| w.open.key == key)
            .ok_or_else(|| AnswerError::NotOpen(key.to_string()))?;
        let w = list.remove(at);
        if list.is_empty() {
            map.remove(root);
        }
        // The asker may have stopped waiting a moment ago: then it is refused.
        let _ = w.answer.send(approval);
        Ok(())
    }

    /// Changes whenever a question is opened.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.opened.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(root: &str, call: &str) -> Question {
        Question {
            task_id: "t1".into(),
            root_id: root.into(),
            call_id: call.into(),
            agent: "a".into(),
            tool: "kb_write".into(),
            arguments: "{}".into(),
        }
    }

    #[tokio::test]
    async fn an_answer_reaches_its_asker_and_a_dropped_ticket_leaves_the_inbox() {
        let inbox = Inbox::default();
        let q = question("root", "c1");
        let mut ticket = inbox.open(&q);
        assert_eq!(inbox.questions("root").len(), 1);
        assert!(
            inbox
                .answer("root", "t1.nope", Approval::unanswered("", "x", ""))
                .is_err()
        );
        let yes = Approval {
            question: q.text(),
            decision: Decision::Accepted,
            by: Some("alice".into()),
            via: "tasks/update".into(),
            note: None,
        };
        inbox.answer("root", &q.key(), yes.clone()).unwrap();
        assert_eq!(ticket.answer().await, yes);
        assert!(inbox.questions("root").is_empty());
        let other = inbox.open(&question("root", "c2"));
        drop(other);
        assert!(inbox.questions("root").is_empty());
        assert!(inbox.answer("root", "t1.c2", yes).is_err());
    }

    #[tokio::test]
    async fn no_approver_and_a_slow_one_are_refusals_not_hangs() {
        let approvers = Approvers::default();
        let q = question("r", "c");
        let a = approvers.ask(&q, Duration::from_secs(5)).await;
        assert_eq!(a.decision, Decision::Unanswered);
        struct Never;
        impl Approver for Never {
            fn ask<'a>(&'a self, _: &'a Question) -> BoxFuture<'a, Approval> {
                Box::pin(std::future::pending())
            }
        }
        approvers.set("r", Arc::new(Never));
        let a = approvers.ask(&q, Duration::from_millis(1)).await;
        assert_eq!(a.decision, Decision::Unanswered);
        assert!(a.note.unwrap().contains("approval_timeout_secs"));
        let fixed = FixedAnswers {
            approve: vec!["kb_write".into()],
            by: "--approve".into(),
        };
        assert_eq!(fixed.ask(&q).await.decision, Decision::Accepted);
    }
}
