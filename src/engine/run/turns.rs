//! One answer of an agent: a single call, or for an agent with tools the
//! tool loop (model → tool calls → results → model, until it answers).
//!
//! Every model turn that asks for tools and every tool result is stored as
//! a [`Turn`] before the loop acts on it. A resumed task replays the stored
//! turns of the answer it was writing into the conversation, runs only the
//! calls that have no stored result, and re-attaches to a child task whose
//! creation was stored instead of creating another.

use std::collections::HashMap;
use std::time::Instant;

use super::super::tools::{Resolved, ToolOutput, Toolbox, cut};
use super::child;
use super::ctx::{Answer, CallError, RunCtx};
use crate::agent::{Agent, ModelRef};
use crate::provider::{ChatRequest, Message, ToolCall, ToolResult};
use crate::task::{Approval, AttemptKind, Decision, FailReason, TaskId, ToolCallRecord, TurnEvent};

/// One answer to write.
pub(super) struct Step<'a> {
    /// Primary or escalation.
    pub kind: AttemptKind,
    /// The agent answering.
    pub agent: &'a Agent,
    /// Its model chain.
    pub chain: &'a [ModelRef],
    /// The conversation so far.
    pub req: ChatRequest,
    /// The revision message, when this answer is a revision.
    pub revision: Option<String>,
    /// Which answer of the audit loop it is, from 1.
    pub number: u32,
}

/// Why no answer came.
pub(super) enum AnswerError {
    /// A provider call failed (or its tree refused it) on the way.
    Call(CallError),
    /// The loop stopped without an answer (`max_turns`, a tree limit).
    Stopped {
        /// The task's fail reason.
        reason: FailReason,
        /// What happened.
        error: String,
        /// The model's last text, kept.
        last_text: Option<String>,
        /// The model that wrote it.
        model: Option<String>,
    },
}

/// Where a resumed loop was: the conversation so far and the calls of its
/// last model turn, with the results already stored.
#[derive(Default)]
struct Replay {
    messages: Vec<Message>,
    pending: Vec<ToolCall>,
    results: HashMap<String, ToolResult>,
    children: HashMap<String, TaskId>,
    turns: u32,
    last_text: Option<(String, String)>,
}

impl Replay {
    fn of(ctx: &RunCtx<'_>, number: u32) -> Replay {
        let mut r = Replay::default();
        let turns = ctx.turns.lock().unwrap_or_else(|p| p.into_inner());
        for t in turns.iter().filter(|t| t.answer == number) {
            match &t.event {
                TurnEvent::Model { model, text, calls } => {
                    r.close_pending();
                    // Call ids are unique within a turn only (a model may
                    // number each turn's calls from 0 again).
                    r.results.clear();
                    r.children.clear();
                    let calls: Vec<ToolCall> = calls
                        .iter()
                        .map(|c| ToolCall {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        })
                        .collect();
                    r.messages
                        .push(Message::assistant_calls(text.clone(), calls.clone()));
                    r.pending = calls;
                    r.turns += 1;
                    if !text.is_empty() {
                        r.last_text = Some((text.clone(), model.clone()));
                    }
                }
                TurnEvent::ChildStarted {
                    call_id,
                    child_task_id,
                    ..
                } => {
                    r.children.insert(call_id.clone(), child_task_id.clone());
                }
                TurnEvent::ToolResult {
                    call_id,
                    name,
                    content,
                    is_error,
                    ..
                } => {
                    r.results.insert(
                        call_id.clone(),
                        ToolResult {
                            call_id: call_id.clone(),
                            name: name.clone(),
                            content: content.clone(),
                            is_error: *is_error,
                        },
                    );
                }
                // A question without an answer is asked again.
                TurnEvent::Asked { .. } => {}
            }
        }
        r
    }

    /// The loop stops without an answer, keeping the model's last text.
    fn stop(&self, reason: FailReason, error: String) -> AnswerError {
        let (last_text, model) = self.last_text.clone().unzip();
        AnswerError::Stopped {
            reason,
            error,
            last_text,
            model,
        }
    }

    /// All calls of the last turn have results: send them.
    fn close_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let results = self
            .pending
            .drain(..)
            .filter_map(|c| self.results.remove(&c.id))
            .collect();
        self.messages.push(Message::results(results));
    }
}

/// Write one answer.
pub(super) async fn answer(
    ctx: &RunCtx<'_>,
    tools: Option<&Toolbox>,
    step: Step<'_>,
) -> Result<Answer, AnswerError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return ctx
            .call(step.kind, step.agent, step.chain, &step.req, step.revision)
            .await
            .map_err(AnswerError::Call);
    };
    let mut req = step.req;
    req.tools = tools.specs();
    let mut replay = Replay::of(ctx, step.number);
    req.messages.append(&mut replay.messages);
    let max_turns = step
        .agent
        .max_turns
        .unwrap_or(ctx.engine.cfg.acting.max_turns);
    loop {
        if !replay.pending.is_empty() {
            let results = run_calls(ctx, tools, step.number, &mut replay).await;
            req.messages.push(Message::results(results));
        }
        if replay.turns >= max_turns {
            return Err(replay.stop(
                FailReason::MaxTurns,
                format!(
                    "the tool loop took {max_turns} turns (max_turns) without a final answer; raise `max_turns` in the agent file or [limits] if it needs more"
                ),
            ));
        }
        // The revision message is recorded with the answer's first call only.
        let revision = if replay.turns == 0 {
            step.revision.clone()
        } else {
            None
        };
        let ans = match ctx
            .call(step.kind, step.agent, step.chain, &req, revision)
            .await
        {
            Ok(a) => a,
            Err(CallError::Tree(m)) => return Err(replay.stop(FailReason::TreeLimit, m)),
            Err(e) if replay.turns == 0 => return Err(AnswerError::Call(e)),
            // Mid-loop: the task fails as the call did, its last text kept.
            Err(e) => return Err(replay.stop(e.reason(), e.message())),
        };
        if ans.tool_calls.is_empty() {
            return Ok(ans);
        }
        replay.turns += 1;
        let mut ans = ans;
        distinct_ids(&mut ans.tool_calls);
        let calls = ans.tool_calls.clone();
        let text = ans.text.clone();
        if !text.is_empty() {
            replay.last_text = Some((text.clone(), ans.model.to_string()));
        }
        keep_turn(ctx, step.number, ans).await;
        req.messages
            .push(Message::assistant_calls(text, calls.clone()));
        replay.pending = calls;
    }
}

/// Give each call of a turn its own id: a model that repeats one (or whose
/// provider numbered them) gets `<id>_2`, `<id>_3`, ... for the later ones,
/// so each call has its own result, child and question.
fn distinct_ids(calls: &mut [ToolCall]) {
    let mut seen = std::collections::HashSet::new();
    for c in calls.iter_mut() {
        let mut n = 1;
        let base = c.id.clone();
        while !seen.insert(c.id.clone()) {
            n += 1;
            c.id = format!("{base}_{n}");
        }
    }
}

/// Store a model turn that asked for tools (and its attempt, as a turn)
/// before any of its calls run.
async fn keep_turn(ctx: &RunCtx<'_>, number: u32, ans: Answer) {
    let mut attempt = ans.attempt;
    attempt.kind = AttemptKind::Turn;
    let event = TurnEvent::Model {
        model: ans.model.to_string(),
        text: ans.text,
        calls: ans
            .tool_calls
            .iter()
            .map(|c| ToolCallRecord {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect(),
    };
    tokio::join!(ctx.commit(attempt), ctx.add_turn(number, event));
}

/// Run the pending calls (those without a stored result) at once, storing
/// each result as it comes; the results in call order.
async fn run_calls(
    ctx: &RunCtx<'_>,
    tools: &Toolbox,
    number: u32,
    replay: &mut Replay,
) -> Vec<ToolResult> {
    let calls = std::mem::take(&mut replay.pending);
    let todo = calls
        .iter()
        .filter(|c| !replay.results.contains_key(&c.id))
        .map(|c| {
            let child = replay.children.get(&c.id).cloned();
            run_call(ctx, tools, number, c, child)
        });
    for r in futures_util::future::join_all(todo).await {
        replay.results.insert(r.call_id.clone(), r);
    }
    calls
        .iter()
        .filter_map(|c| replay.results.remove(&c.id))
        .collect()
}

/// One call: resolved against the box, run, cut to the limit, scrubbed of
/// keys, and stored before it is returned.
async fn run_call(
    ctx: &RunCtx<'_>,
    tools: &Toolbox,
    number: u32,
    call: &ToolCall,
    child: Option<TaskId>,
) -> ToolResult {
    let t0 = Instant::now();
    ctx.acting(format!("calling {}", crate::engine::echo(&call.name)));
    let resolved = tools.resolve(&call.name, &call.arguments);
    let approval = match tools.asks(&resolved) {
        true => {
            let a = ask(ctx, number, call).await;
            if a.decision == Decision::Accepted {
                ctx.acting(format!("calling {}", crate::engine::echo(&call.name)));
            }
            Some(a)
        }
        false => None,
    };
    let resolved = match &approval {
        Some(a) if a.decision != Decision::Accepted => Resolved::Refused(ToolOutput::error(
            crate::engine::approval::refusal(&call.name, a),
        )),
        _ => resolved,
    };
    let (out, child_id) = match resolved {
        Resolved::Refused(out) => (out, None),
        Resolved::Local(b, args) => (tools.run_local(b, args).await, None),
        Resolved::Remote { server, tool, args } => {
            (tools.run_remote(&server, &tool, args).await, None)
        }
        Resolved::Child(args) => {
            let (out, id) = child::run(ctx, number, &call.id, args, child).await;
            (out, id)
        }
    };
    let out = match ctx.engine.providers.scrub(&out.content) {
        Some(clean) => ToolOutput {
            content: clean,
            is_error: out.is_error,
        },
        None => out,
    };
    let (out, bytes) = cut(out, ctx.engine.cfg.acting.max_tool_result_bytes);
    let event = TurnEvent::ToolResult {
        call_id: call.id.clone(),
        name: call.name.clone(),
        content: out.content.clone(),
        is_error: out.is_error,
        bytes,
        latency_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        child_task_id: child_id,
        approval,
    };
    ctx.add_turn(number, event).await;
    ToolResult {
        call_id: call.id.clone(),
        name: call.name.clone(),
        content: out.content,
        is_error: out.is_error,
    }
}

/// Ask a human whether `call` may run: the question is stored (the task
/// shows it is waiting) before it goes out; the answer is stored with the
/// call's result.
async fn ask(ctx: &RunCtx<'_>, number: u32, call: &ToolCall) -> Approval {
    let question = crate::engine::approval::Question {
        task_id: ctx.task.id.clone(),
        root_id: ctx.task.root().to_string(),
        call_id: call.id.clone(),
        agent: ctx.task.agent.clone(),
        tool: call.name.clone(),
        arguments: call.arguments.clone(),
    };
    ctx.acting(format!(
        "waiting for a human to approve {}",
        crate::engine::echo(&call.name)
    ));
    ctx.add_turn(
        number,
        TurnEvent::Asked {
            call_id: call.id.clone(),
            name: call.name.clone(),
            question: question.text(),
        },
    )
    .await;
    // An answer that is there at once (flags) keeps the task's slots; one
    // that waits for a human waits without them, as a wait on a child does.
    let mut answer = std::pin::pin!(ctx.engine.approve(&question));
    if let Some(a) = futures_util::FutureExt::now_or_never(&mut answer) {
        return a;
    }
    ctx.slots.release();
    let a = answer.await;
    ctx.slots.regain(ctx.engine, &ctx.task.agent).await;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_call_ids_are_made_distinct_in_order() {
        let call = |id: &str| ToolCall {
            id: id.into(),
            name: "kb_read".into(),
            arguments: "{}".into(),
        };
        let mut calls = vec![call("a"), call("a"), call("b"), call("a_2"), call("a")];
        distinct_ids(&mut calls);
        let ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "a_2", "b", "a_2_2", "a_3"]);
    }
}
