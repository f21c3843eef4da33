//! Approvals through the client: a call of a tool an agent file marks `ask`
//! becomes a question to the human behind the MCP client that started the
//! tree.
//!
//! - A session whose client declared `elicitation` (2025-11-25 and older)
//!   gets an `elicitation/create` form request with one boolean, `approve`.
//! - A 2026-07-28 client (no session to send a request on) sees the
//!   question as `inputRequests`: in its task's `tasks/get` (status
//!   `input_required`), answered by `tasks/update`, or as the
//!   `input_required` result of its `tools/call`, answered by the retry.
//!   Both put the answer into the engine's [`Inbox`].
//! - A client that declared neither gets a refusal the model reads.
//!
//! The question, the answer and who answered are recorded with the tool call
//! (the engine does that with what the approver returns).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use rmcp::RoleServer;
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema, InputRequest,
    InputRequests, InputResponses,
};
use rmcp::service::{Peer, RequestContext};
use serde_json::Value;

use crate::engine::Engine;
use crate::engine::approval::{Approver, AskVia, Inbox, Question};
use crate::task::{Approval, Decision};

/// The one field of the approval form.
const APPROVE: &str = "approve";

/// How the client of one request can be asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reach {
    /// `elicitation/create` on the session.
    Elicitation,
    /// `inputRequests` the client answers in a later request (2026-07-28).
    InputRequests,
    /// Not at all: the client declared no elicitation.
    Nobody,
}

/// How the client behind `context` can be asked.
pub fn reach_of(context: &RequestContext<RoleServer>) -> Reach {
    let elicits = context
        .client_capabilities()
        .is_some_and(|c| c.elicitation.is_some());
    match (elicits, speaks_2026(context)) {
        (false, _) => Reach::Nobody,
        (true, true) => Reach::InputRequests,
        (true, false) => Reach::Elicitation,
    }
}

/// Whether the request speaks the 2026-07-28 revision (or a later one), by
/// its own `_meta` or its session's negotiated version.
pub fn speaks_2026(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= "2026-07-28")
}

/// The approver of trees a client starts.
pub struct ClientApprover {
    engine: Arc<Engine>,
    peer: Option<Peer<RoleServer>>,
    reach: Reach,
    /// Who answers, for the record.
    by: String,
}

impl ClientApprover {
    /// The approver for a tree started by this request's client.
    pub fn of(
        engine: &Arc<Engine>,
        context: &RequestContext<RoleServer>,
        subject: Option<&str>,
    ) -> AskVia {
        let reach = reach_of(context);
        AskVia(Arc::new(ClientApprover {
            engine: engine.clone(),
            peer: (reach == Reach::Elicitation).then(|| context.peer.clone()),
            reach,
            by: subject.map_or_else(|| "the client's user".to_string(), str::to_string),
        }))
    }

    async fn elicit(&self, q: &Question) -> Approval {
        let text = q.text();
        let Some(peer) = &self.peer else {
            return Approval::unanswered(&text, "elicitation", "no session to ask on");
        };
        let mut params = form(&text);
        // A question of an MCP task says so (2025-11-25: related-task).
        if let Ok(Some(t)) = self.engine.store().get_client_task(&q.root_id).await {
            let mut meta = rmcp::model::JsonObject::new();
            meta.insert(
                super::client_tasks::RELATED_TASK.into(),
                serde_json::json!({ "taskId": t.id }),
            );
            if let ElicitRequestParams::FormElicitationParams { meta: m, .. } = &mut params {
                *m = Some(rmcp::model::RequestMetaObject(rmcp::model::MetaObject(
                    meta,
                )));
            }
        }
        match peer.create_elicitation(params).await {
            Ok(r) => Approval {
                decision: decision_of(&r.action, r.content.as_ref()),
                question: text,
                by: Some(self.by.clone()),
                via: "elicitation".into(),
                note: None,
            },
            Err(e) => Approval::unanswered(
                &text,
                "elicitation",
                format!(
                    "the client could not be asked: {}",
                    crate::provider::clip(&e.to_string(), 300)
                ),
            ),
        }
    }

    async fn by_inbox(&self, q: &Question, inbox: &Inbox) -> Approval {
        inbox.open(q).answer().await
    }
}

impl Approver for ClientApprover {
    fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
        Box::pin(async move {
            match self.reach {
                Reach::Elicitation => self.elicit(q).await,
                Reach::InputRequests => self.by_inbox(q, self.engine.inbox()).await,
                Reach::Nobody => Approval::unanswered(
                    &q.text(),
                    "none",
                    "the client that started this task did not declare the elicitation capability, so no human can be asked",
                ),
            }
        })
    }
}

/// An approver that refuses every question, saying why.
pub fn refusing(why: &'static str) -> AskVia {
    struct Refuse(&'static str);
    impl Approver for Refuse {
        fn ask<'a>(&'a self, q: &'a Question) -> BoxFuture<'a, Approval> {
            Box::pin(std::future::ready(Approval::unanswered(
                &q.text(),
                "none",
                self.0,
            )))
        }
    }
    AskVia(Arc::new(Refuse(why)))
}

/// The form that asks `text`.
fn form(text: &str) -> ElicitRequestParams {
    let schema = ElicitationSchema::builder()
        .required_bool_with(APPROVE, |b| {
            b.title("Approve")
                .description("true runs the call; false refuses it")
        })
        .build()
        .unwrap_or_else(|_| ElicitationSchema::builder().build_unchecked());
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: text.to_string(),
        requested_schema: schema,
    }
}

/// accept with `approve: true` runs the call; anything else does not.
fn decision_of(action: &ElicitationAction, content: Option<&Value>) -> Decision {
    match action {
        ElicitationAction::Accept => match content.and_then(|c| c.get(APPROVE)) {
            Some(Value::Bool(true)) => Decision::Accepted,
            _ => Decision::Declined,
        },
        ElicitationAction::Decline => Decision::Declined,
        _ => Decision::Cancelled,
    }
}

/// The questions of the tree rooted at `root` as `inputRequests`.
pub fn input_requests(engine: &Engine, root: &str) -> InputRequests {
    engine
        .inbox()
        .questions(root)
        .into_iter()
        .map(|o| {
            let req = ElicitRequest::new(form(&o.question.text()));
            (o.key, InputRequest::Elicitation(req))
        })
        .collect()
}

/// Why `inputResponses` were not taken.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// A response is not an elicitation result.
    #[error(
        "inputResponses[\"{key}\"] is not an elicitation result ({{\"action\": \"accept\"|\"decline\"|\"cancel\", \"content\": {{\"approve\": true|false}}}}): {why}"
    )]
    Shape {
        /// The response's key.
        key: String,
        /// What serde said.
        why: String,
    },
}

/// What became of a batch of `inputResponses`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// How many answers reached their questions.
    pub taken: usize,
    /// The keys whose questions no longer wait (answered already, timed
    /// out), clipped.
    pub gone: Vec<String>,
}

/// Deliver `responses` to the questions of the tree rooted at `root`; `by`
/// and `via` are recorded. Every response is checked before any is
/// delivered; those that name a waiting question are all delivered at once,
/// the rest reported in [`Delivered::gone`].
pub fn answer(
    engine: &Engine,
    root: &str,
    responses: &InputResponses,
    by: &str,
    via: &str,
) -> Result<Delivered, ResponseError> {
    let open = engine.inbox().questions(root);
    let mut answers = Vec::with_capacity(responses.len());
    let mut gone = Vec::new();
    for (key, value) in responses {
        let r: rmcp::model::ElicitResult =
            serde_json::from_value(value.clone()).map_err(|e| ResponseError::Shape {
                key: clip(key),
                why: e.to_string(),
            })?;
        let Some(o) = open.iter().find(|o| &o.key == key) else {
            gone.push(clip(key));
            continue;
        };
        let approval = Approval {
            question: o.question.text(),
            decision: decision_of(&r.action, r.content.as_ref()),
            by: Some(by.to_string()),
            via: via.to_string(),
            note: None,
        };
        answers.push((key.clone(), approval));
    }
    let tried = answers.len();
    let late = engine.inbox().answer_all(root, answers);
    let taken = tried - late.len();
    gone.extend(late.iter().map(|k| clip(k)));
    if !gone.is_empty() {
        tracing::debug!(root, gone = ?gone, "answers to questions that no longer wait were ignored");
    }
    Ok(Delivered { taken, gone })
}

/// A client's key, as an error quotes it.
fn clip(key: &str) -> String {
    crate::provider::clip(key, 120)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_an_accepted_true_runs_the_call() {
        let yes = json!({"approve": true});
        let no = json!({"approve": false});
        let odd = json!({"approve": "yes"});
        assert_eq!(
            decision_of(&ElicitationAction::Accept, Some(&yes)),
            Decision::Accepted
        );
        assert_eq!(
            decision_of(&ElicitationAction::Accept, Some(&no)),
            Decision::Declined
        );
        assert_eq!(
            decision_of(&ElicitationAction::Accept, Some(&odd)),
            Decision::Declined
        );
        assert_eq!(
            decision_of(&ElicitationAction::Accept, None),
            Decision::Declined
        );
        assert_eq!(
            decision_of(&ElicitationAction::Decline, Some(&yes)),
            Decision::Declined
        );
        assert_eq!(
            decision_of(&ElicitationAction::Cancel, Some(&yes)),
            Decision::Cancelled
        );
    }

    #[test]
    fn the_form_asks_one_required_boolean() {
        let v = serde_json::to_value(form("may I?")).unwrap();
        assert_eq!(v["mode"], "form");
        assert_eq!(v["message"], "may I?");
        assert_eq!(
            v["requestedSchema"]["properties"]["approve"]["type"],
            "boolean"
        );
        assert_eq!(v["requestedSchema"]["required"], json!(["approve"]));
    }
}
