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
        Decision::Declined => match &approval.note {
            Some(why) => format!("it was declined ({why})"),
            None => "the human declined it".to_string(),
        },
        Decision::Cancelled => match &approval.note {
            Some(why) => format!("the question was dismissed without approving ({why})"),
            None => "the human dismissed the question without approving".to_string(),
        },
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
    /// Tools (as the model names them) approved without asking; `*` is all.
    approve: Vec<String>,
    /// Who answers, for the record (`--approve`).
    by: String,
}

impl FixedAnswers {
    /// Approve the calls of `tools` (`*`: all), refuse the rest.
    pub fn only(tools: Vec<String>, by: &str) -> FixedAnswers {
        FixedAnswers {
            approve: tools,
            by: by.to_string(),
        }
    }

    /// Refuse every call.
    pub fn none(by: &str) -> FixedAnswers {
        FixedAnswers::only(Vec::new(), by)
    }

    /// Why a call of a tool not on the list is refused, for the record.
    fn why_not(&self) -> String {
        match self.approve.is_empty() {
            true => format!("{} refuses every call", self.by),
            false => format!(
                "not approved by {} (which approves only {})",
                self.by,
                self.approve.join(", ")
            ),
        }
    }
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
            note: (!yes).then(|| self.why_not()),
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

/// One tree's questions, and whether it still takes any.
#[derive(Default)]
struct RootBox {
    waiting: Vec<Waiter>,
    /// Set once no one will answer this tree's questions: why. New ones are
    /// refused with it at once.
    shut: Option<String>,
}

/// The questions of this process's trees that wait for an answer, per root.
/// Each is removed when it is answered or its asker stops waiting.
pub struct Inbox {
    by_root: Mutex<HashMap<TaskId, RootBox>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, RootBox>> {
        self.by_root.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put `question` in the inbox until it is answered or the ticket drops.
    /// In a tree no one answers for any more, it is refused at once.
    pub fn open(&self, question: &Question) -> Ticket<'_> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key = question.key();
        let ticket = Ticket {
            inbox: self,
            root: question.root_id.clone(),
            key: key.clone(),
            answer: rx,
        };
        let mut map = self.lock();
        if let Some(why) = map.get(&question.root_id).and_then(|b| b.shut.clone()) {
            let _ = tx.send(Approval::unanswered(&question.text(), "none", why));
            return ticket;
        }
        map.entry(question.root_id.clone())
            .or_default()
            .waiting
            .push(Waiter {
                open: Open {
                    key,
                    question: question.clone(),
                },
                answer: tx,
            });
        drop(map);
        self.opened.send_modify(|n| *n = n.wrapping_add(1));
        ticket
    }

    fn close(&self, root: &str, key: &str) {
        let mut map = self.lock();
        if let Some(b) = map.get_mut(root) {
            b.waiting.retain(|w| w.open.key != key);
            if b.waiting.is_empty() && b.shut.is_none() {
                map.remove(root);
            }
        }
    }

    /// The questions of the tree rooted at `root` that wait, oldest first.
    pub fn questions(&self, root: &str) -> Vec<Open> {
        self.lock()
            .get(root)
            .map(|b| b.waiting.iter().map(|w| w.open.clone()).collect())
            .unwrap_or_default()
    }

    /// Answer the question `key` of the tree rooted at `root`.
    pub fn answer(&self, root: &str, key: &str, approval: Approval) -> Result<(), AnswerError> {
        let gone = self.answer_all(root, vec![(key.to_string(), approval)]);
        match gone.into_iter().next() {
            Some(key) => Err(AnswerError::NotOpen(key)),
            None => Ok(()),
        }
    }

    /// Answer several questions of the tree rooted at `root` at once; the
    /// keys that name no waiting question (answered already, timed out) are
    /// returned, the others all delivered.
    pub fn answer_all(&self, root: &str, answers: Vec<(String, Approval)>) -> Vec<String> {
        let mut map = self.lock();
        let Some(b) = map.get_mut(root) else {
            return answers.into_iter().map(|(k, _)| k).collect();
        };
        let mut gone = Vec::new();
        for (key, approval) in answers {
            match b.waiting.iter().position(|w| w.open.key == key) {
                // The asker may have stopped waiting a moment ago: then it is refused.
                Some(at) => {
                    let _ = b.waiting.remove(at).answer.send(approval);
                }
                None => gone.push(key),
            }
        }
        if b.waiting.is_empty() && b.shut.is_none() {
            map.remove(root);
        }
        gone
    }

    /// No one will answer the questions of the tree rooted at `root` any
    /// more (the client that could has gone its way): those waiting and any
    /// asked later are refused with `why`. Only while `is_live()` says the
    /// tree still runs here, so a tree that has ended leaves nothing behind;
    /// [`Inbox::forget`] clears the mark when it ends.
    pub fn shut(&self, root: &str, why: &str, is_live: impl FnOnce() -> bool) {
        let mut map = self.lock();
        if !is_live() {
            return;
        }
        let b = map.entry(root.to_string()).or_default();
        b.shut = Some(why.to_string());
        for w in b.waiting.drain(..) {
            let _ = w
                .answer
                .send(Approval::unanswered(&w.open.question.text(), "none", why));
        }
    }

    /// The tree rooted at `root` has ended here.
    pub fn forget(&self, root: &str) {
        self.lock().remove(root);
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
    async fn a_shut_tree_refuses_its_waiting_and_later_questions_until_forgotten() {
        let inbox = Inbox::default();
        let mut waiting = inbox.open(&question("root", "c1"));
        inbox.shut("root", "no one listens", || false);
        assert_eq!(
            inbox.questions("root").len(),
            1,
            "an ended tree is not marked"
        );
        inbox.shut("root", "no one listens", || true);
        let a = waiting.answer().await;
        assert_eq!(a.decision, Decision::Unanswered);
        assert_eq!(a.note.as_deref(), Some("no one listens"));
        let mut later = inbox.open(&question("root", "c2"));
        assert_eq!(later.answer().await.decision, Decision::Unanswered);
        assert!(inbox.questions("root").is_empty());
        inbox.forget("root");
        let _fresh = inbox.open(&question("root", "c3"));
        assert_eq!(inbox.questions("root").len(), 1);
    }

    #[tokio::test]
    async fn a_batch_of_answers_delivers_the_open_ones_and_names_the_rest() {
        let inbox = Inbox::default();
        let mut one = inbox.open(&question("root", "c1"));
        let mut two = inbox.open(&question("root", "c2"));
        let yes = |_: ()| Approval {
            question: String::new(),
            decision: Decision::Accepted,
            by: None,
            via: "test".into(),
            note: None,
        };
        let gone = inbox.answer_all(
            "root",
            vec![
                ("t1.c1".into(), yes(())),
                ("t1.old".into(), yes(())),
                ("t1.c2".into(), yes(())),
            ],
        );
        assert_eq!(gone, ["t1.old"]);
        assert_eq!(one.answer().await.decision, Decision::Accepted);
        assert_eq!(two.answer().await.decision, Decision::Accepted);
        assert!(inbox.questions("root").is_empty());
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
        let fixed = FixedAnswers::only(vec!["kb_write".into()], "--approve");
        assert_eq!(fixed.ask(&q).await.decision, Decision::Accepted);
        let other = FixedAnswers::only(vec!["kb_read".into()], "--approve");
        let no = other.ask(&q).await;
        assert_eq!(no.decision, Decision::Declined);
        assert!(no.note.unwrap().contains("approves only kb_read"));
    }
}
