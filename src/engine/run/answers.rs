//! The audit loop: answer, audit, revise / escalate / reject, each answer
//! and verdict stored with its attempt before the loop acts on it.

use super::super::audit::{
    AuditTrail, Report, Round, Verdict, audit_message, parse_report, repair_message,
    revision_message,
};
use std::sync::Arc;

use super::super::input;
use super::super::tools::Toolbox;
use super::ctx::{CallError, Draft, RunCtx, file_name, request_for};
use super::{Outcome, turns};
use crate::agent::{Agent, ModelRef};
use crate::provider::{ChatRequest, Message};
use crate::task::{Attempt, AttemptKind, FailReason};

/// Rebuild the loop's progress from attempts an earlier run recorded.
pub(super) fn resume(prior: &[Attempt]) -> (Vec<Draft>, Vec<Round>) {
    let mut drafts = Vec::new();
    let mut rounds = Vec::new();
    for a in prior.iter().filter(|a| a.ok) {
        match a.kind {
            AttemptKind::Primary | AttemptKind::Escalation => {
                if let Some(text) = &a.output {
                    drafts.push(Draft {
                        text: text.clone(),
                        model: format!("{}/{}", a.provider, a.model),
                        escalation: a.kind == AttemptKind::Escalation,
                    });
                }
            }
            AttemptKind::Audit | AttemptKind::AuditRepair => {
                if let Some(r) = a
                    .verdict
                    .as_ref()
                    .and_then(|v| serde_json::from_value::<Round>(v.clone()).ok())
                {
                    rounds.push(r);
                }
            }
            AttemptKind::Routing | AttemptKind::Turn => {}
        }
    }
    (drafts, rounds)
}

/// The agent and its auditor, or why the task cannot run.
async fn resolve(ctx: &RunCtx<'_>) -> Result<(Arc<Agent>, Option<Arc<Agent>>), Outcome> {
    let invalid = |msg: String| Outcome::failed(FailReason::Invalid, msg);
    let agent = ctx
        .engine
        .agent(&ctx.task.agent)
        .map_err(|e| invalid(e.to_string()))?;
    if agent.is_workflow() {
        return Err(invalid(format!(
            "`{}` is a workflow agent (it has `dag:`); workflows are not supported by this version yet",
            agent.name
        )));
    }
    if agent.models.is_empty() {
        return Err(invalid(format!(
            "agent `{}` has no model dispatch can call: add `model: provider/model-id` to its agent file ({})",
            agent.name,
            file_name(&agent.source)
        )));
    }
    let Some(m) = &agent.mirror else {
        return Ok((agent, None));
    };
    match ctx.engine.agent(m) {
        Ok(a) if !a.models.is_empty() => Ok((agent.clone(), Some(a))),
        Ok(_) => Err(invalid(format!(
            "the auditor `{m}` of `{}` has no model dispatch can call",
            agent.name
        ))),
        Err(_) => Err(invalid(format!(
            "the auditor `{m}` of `{}` is not loaded: see agent_list",
            agent.name
        ))),
    }
}

/// Whether this task is audited: decided once and recorded before any call,
/// so a resumed task keeps its decision.
async fn decide_audit(
    ctx: &RunCtx<'_>,
    agent: &Agent,
    auditor: Option<&Agent>,
) -> Option<AuditTrail> {
    let trail = ctx.trail.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match (auditor, trail) {
        (Some(auditor), None) => {
            let decision = ctx.engine.sampler.decide(&agent.name, agent.audit.as_ref());
            let t = AuditTrail {
                mirror: auditor.name.clone(),
                decision,
                rounds: Vec::new(),
                final_verdict: None,
            };
            ctx.save_trail(&t).await;
            Some(t)
        }
        (_, trail) => trail,
    }
}

/// The audit loop's state: the answers written and the verdicts given.
struct AuditLoop<'c, 'a> {
    ctx: &'c RunCtx<'a>,
    agent: Arc<Agent>,
    auditor: Option<Arc<Agent>>,
    trail: Option<AuditTrail>,
    tools: Option<Toolbox>,
    input_text: String,
    drafts: Vec<Draft>,
    rounds: Vec<Round>,
}

/// What to write next.
struct NextAnswer {
    kind: AttemptKind,
    chain: Vec<ModelRef>,
    req: ChatRequest,
    revision: Option<String>,
}

pub(super) async fn run_agent(ctx: &RunCtx<'_>) -> Outcome {
    let (agent, auditor) = match resolve(ctx).await {
        Ok(x) => x,
        Err(o) => return o,
    };
    let trail = decide_audit(ctx, &agent, auditor.as_deref()).await;
    let (drafts, rounds) = resume(&ctx.prior);
    let mut lp = AuditLoop {
        ctx,
        tools: ctx.toolbox(&agent).await,
        agent,
        auditor,
        trail,
        input_text: input::render_input(&ctx.task.input),
        drafts,
        rounds,
    };
    lp.run().await
}

impl AuditLoop<'_, '_> {
    fn audited(&self) -> bool {
        self.trail.as_ref().is_some_and(|t| t.decision.audited)
    }

    /// A failure that keeps the last answer (marked as not accepted).
    fn rejected(&self, reason: FailReason, error: String) -> Outcome {
        let last = self.drafts.last();
        Outcome::Failed {
            reason,
            error,
            output: last.map(|d| d.text.clone()),
            model: last.map(|d| d.model.clone()),
        }
    }

    async fn run(&mut self) -> Outcome {
        loop {
            // An answer waiting for judgement.
            if self.drafts.len() > self.rounds.len()
                && let Some(done) = self.judge().await
            {
                return done;
            }
            // Every answer so far is judged (or there is none yet): write the next one.
            let next = match self.next_answer() {
                Ok(n) => n,
                Err(done) => return done,
            };
            if let Err(done) = self.write(next).await {
                return done;
            }
        }
    }

    /// Judge the last answer: `Some` when that ends the task.
    async fn judge(&mut self) -> Option<Outcome> {
        let ctx = self.ctx;
        let Some(draft) = self.drafts.last().cloned() else {
            return Some(Outcome::failed(
                FailReason::Internal,
                "audit loop lost its answer",
            ));
        };
        let audited = self.audited();
        let (Some(auditor), true) = (self.auditor.clone(), audited) else {
            return Some(Outcome::Succeeded {
                output: draft.text,
                model: draft.model,
            });
        };
        let agent = self.agent.clone();
        let n = self.drafts.len() as u32;
        let max_answers = 1 + agent.max_retries + u32::from(agent.escalate.is_some());
        ctx.say(&auditor.models[0], "auditing");
        let round = match audit(
            ctx,
            &agent,
            &auditor,
            &self.input_text,
            &draft,
            n,
            max_answers,
            &self.rounds,
        )
        .await
        {
            Ok(r) => r,
            Err(CallError::Tree(m)) => return Some(self.rejected(FailReason::TreeLimit, m)),
            Err(e) => {
                return Some(self.rejected(
                    FailReason::AuditError,
                    format!(
                        "the auditor `{}` could not be reached: {}",
                        auditor.name,
                        e.message()
                    ),
                ));
            }
        };
        ctx.engine.sampler.observe(&agent.name, round.verdict);
        ctx.engine
            .metrics
            .audit_verdict(&agent.name, round.verdict.as_str());
        self.rounds.push(round.clone());
        if let Some(t) = self.trail.as_mut() {
            t.rounds = self.rounds.clone();
            t.final_verdict = match round.verdict {
                Verdict::NeedsRevision => None,
                v => Some(v),
            };
            ctx.save_trail(t).await;
        }
        match round.verdict {
            Verdict::Pass => Some(Outcome::Succeeded {
                output: draft.text,
                model: draft.model,
            }),
            Verdict::Fail => Some(self.rejected(
                FailReason::AuditFailed,
                format!(
                    "the auditor `{}` failed the answer: {}",
                    auditor.name, round.feedback
                ),
            )),
            Verdict::Error => Some(self.rejected(FailReason::AuditError, round.feedback.clone())),
            Verdict::NeedsRevision => None,
        }
    }

    /// The first answer, a revision, the escalation, or the end.
    fn next_answer(&self) -> Result<NextAnswer, Outcome> {
        let agent = &self.agent;
        let ctx = self.ctx;
        let base = request_for(agent, &ctx.task.input);
        let max_revisions = agent.max_retries;
        let (Some(last), Some(round)) = (self.drafts.last(), self.rounds.last()) else {
            if !self.drafts.is_empty() {
                // Unreachable by the loop's invariant (answers > rounds is judged first).
                return Err(Outcome::failed(
                    FailReason::Internal,
                    "audit loop lost track of its rounds",
                ));
            }
            ctx.say(&agent.models[0], "answering");
            return Ok(NextAnswer {
                kind: AttemptKind::Primary,
                chain: agent.models.clone(),
                req: base,
                revision: None,
            });
        };
        let revisions_done = self.drafts.iter().filter(|d| !d.escalation).count() as u32 - 1;
        let (kind, chain, message) = if self.drafts.iter().any(|d| d.escalation) {
            return Err(self.rejected(
                FailReason::AuditRejected,
                format!(
                    "the escalation model's answer was also rejected: {}",
                    round.feedback
                ),
            ));
        } else if revisions_done < max_revisions {
            let k = revisions_done + 1;
            ctx.say(&agent.models[0], format!("revising {k}/{max_revisions}"));
            (
                AttemptKind::Primary,
                agent.models.clone(),
                revision_message(round, k, max_revisions),
            )
        } else if let Some(esc) = &agent.escalate {
            ctx.say(esc, "escalating");
            let mut m = revision_message(round, max_revisions + 1, max_revisions + 1);
            m.push_str("\n\n(This is the last attempt, on a stronger model.)");
            (AttemptKind::Escalation, vec![esc.clone()], m)
        } else {
            return Err(self.rejected(
                FailReason::AuditRejected,
                format!(
                    "the auditor still asked for changes after {max_revisions} revision(s): {}",
                    round.feedback
                ),
            ));
        };
        let mut req = base;
        req.messages.push(Message::assistant(last.text.clone()));
        req.messages.push(Message::user(message.clone()));
        Ok(NextAnswer {
            kind,
            chain,
            req,
            revision: Some(message),
        })
    }

    /// Write one answer (one call, or a tool loop) and keep it.
    async fn write(&mut self, next: NextAnswer) -> Result<(), Outcome> {
        let ctx = self.ctx;
        let number = self.drafts.len() as u32 + 1;
        let step = turns::Step {
            kind: next.kind,
            agent: &self.agent,
            chain: &next.chain,
            req: next.req,
            revision: next.revision,
            number,
        };
        match turns::answer(ctx, self.tools.as_ref(), step).await {
            Ok(answer) => {
                if self.audited() {
                    // The auditor judges it next; a crash must find it.
                    ctx.commit(answer.attempt).await;
                } else {
                    ctx.record(answer.attempt);
                }
                self.drafts.push(Draft {
                    text: answer.text,
                    model: answer.model.to_string(),
                    escalation: next.kind == AttemptKind::Escalation,
                });
                Ok(())
            }
            Err(turns::AnswerError::Stopped {
                reason,
                error,
                last_text,
                model,
            }) => Err(Outcome::Failed {
                reason,
                error,
                output: last_text.or_else(|| self.drafts.last().map(|d| d.text.clone())),
                model: model.or_else(|| self.drafts.last().map(|d| d.model.clone())),
            }),
            Err(turns::AnswerError::Call(e)) if self.drafts.is_empty() => {
                Err(Outcome::failed(e.reason(), e.message()))
            }
            Err(turns::AnswerError::Call(e)) => Err(self.rejected(
                e.reason(),
                format!("the revision could not be written: {}", e.message()),
            )),
        }
    }
}

/// One audit of one answer: the call, the strict parse, one repair request,
/// and the verdict `error` if that fails too. Never a pass by default.
#[allow(clippy::too_many_arguments)]
pub(super) async fn audit(
    ctx: &RunCtx<'_>,
    agent: &Agent,
    auditor: &Agent,
    input: &str,
    draft: &Draft,
    n: u32,
    max_answers: u32,
    earlier: &[Round],
) -> Result<Round, CallError> {
    let message = audit_message(&agent.name, input, &draft.text, n, max_answers, earlier);
    let mut req = ChatRequest {
        system: auditor.system_prompt.clone(),
        messages: vec![Message::user(message)],
        temperature: auditor.temperature,
        max_tokens: auditor.max_tokens,
        stream: false,
        tools: Vec::new(),
    };
    let round_of = |report: Result<Report, String>| match report {
        Ok(r) => Round {
            attempt: n,
            model: draft.model.clone(),
            escalation: draft.escalation,
            verdict: r.verdict,
            feedback: r.feedback,
            issues: r.issues,
            confidence: r.confidence,
        },
        Err(e) => Round {
            attempt: n,
            model: draft.model.clone(),
            escalation: draft.escalation,
            verdict: Verdict::Error,
            feedback: format!("the auditor's answer could not be parsed twice: {e}"),
            issues: Vec::new(),
            confidence: None,
        },
    };
    let first = ctx
        .call(AttemptKind::Audit, auditor, &auditor.models, &req, None)
        .await?;
    match parse_report(&first.text) {
        Ok(report) => {
            let round = round_of(Ok(report));
            let mut a = first.attempt;
            a.verdict = serde_json::to_value(&round).ok();
            ctx.commit(a).await;
            Ok(round)
        }
        Err(error) => {
            let mut a = first.attempt;
            a.verdict = Some(serde_json::json!({"unparseable": error}));
            ctx.commit(a).await;
            ctx.say(
                &auditor.models[0],
                "asking the auditor to repair its verdict",
            );
            req.messages.push(Message::assistant(first.text));
            req.messages.push(Message::user(repair_message(&error)));
            let second = ctx
                .call(
                    AttemptKind::AuditRepair,
                    auditor,
                    &auditor.models,
                    &req,
                    None,
                )
                .await?;
            let round = round_of(parse_report(&second.text));
            let mut a = second.attempt;
            a.verdict = serde_json::to_value(&round).ok();
            ctx.commit(a).await;
            Ok(round)
        }
    }
}
