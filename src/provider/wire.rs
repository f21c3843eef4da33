//! The one skeleton both wire formats share: send the request, then read the
//! answer whole or as a stream of server-sent events, folding each event into
//! an [`Assembly`]. A format says only what differs: its URL, headers and
//! body, how to parse a whole answer, and what one stream event means.

use std::collections::BTreeMap;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::http::{Endpoint, drain, is_event_stream, read_success_body};
use super::sse::SseParser;
use super::{ChatRequest, ChatResponse, ProgressFn, ProviderError, ToolCall};

/// What one stream event meant.
pub(super) enum Step {
    /// More is coming.
    More,
    /// The answer is complete.
    Done,
}

/// One wire format.
pub(super) trait Wire: Sync {
    /// The endpoint it talks to.
    fn endpoint(&self) -> &Endpoint;
    /// Where requests go.
    fn url(&self) -> String;
    /// Authentication and version headers.
    fn headers(&self) -> Result<HeaderMap, ProviderError>;
    /// The request body.
    fn body(&self, model: &str, req: &ChatRequest) -> Value;
    /// A whole (non-streamed) answer.
    fn parse_whole(&self, body: &[u8], model: &str) -> Result<ChatResponse, ProviderError>;
    /// Fold one stream event's data into the answer so far.
    fn apply_event(
        &self,
        data: &str,
        out: &mut Assembly,
        progress: Option<&ProgressFn>,
    ) -> Result<Step, ProviderError>;
    /// The stream ended without the format's end marker: whether what came
    /// is a whole answer all the same.
    fn complete_at_eof(&self, out: &Assembly) -> Result<(), ProviderError>;
}

/// A streamed answer being put together: the text and the tool calls, each
/// call's pieces gathered under the index the format gives it.
#[derive(Debug, Default)]
pub(super) struct Assembly {
    /// Everything but the tool calls.
    pub response: ChatResponse,
    calls: BTreeMap<u64, ToolCall>,
}

impl Assembly {
    fn new(model: &str) -> Assembly {
        Assembly {
            response: ChatResponse {
                model: model.to_string(),
                ..ChatResponse::default()
            },
            calls: BTreeMap::new(),
        }
    }

    /// The call at `index`, started if new.
    pub(super) fn call(&mut self, index: u64) -> &mut ToolCall {
        self.calls.entry(index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        })
    }

    /// Add a piece of a call's arguments (bounded like the answer's text).
    pub(super) fn push_arguments(
        &mut self,
        ep: &Endpoint,
        index: u64,
        piece: &str,
    ) -> Result<(), ProviderError> {
        let call = self.call(index);
        ep.append_text(&mut call.arguments, piece)
    }

    /// The finished answer. A call with no arguments at all gets `{}`; one
    /// the provider gave no id gets one made from its index.
    pub(super) fn finish(mut self) -> ChatResponse {
        self.response.tool_calls = self
            .calls
            .into_iter()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = format!("call_{i}");
                }
                if c.arguments.trim().is_empty() {
                    c.arguments = "{}".into();
                }
                c
            })
            .collect();
        self.response
    }
}

/// One call of `model`, whole or streamed as the request and the answer's
/// content type say.
pub(super) async fn run<W: Wire>(
    wire: &W,
    model: &str,
    req: &ChatRequest,
    progress: Option<&ProgressFn>,
) -> Result<ChatResponse, ProviderError> {
    let ep = wire.endpoint();
    let headers = wire.headers()?;
    let mut resp = ep
        .post(&wire.url(), headers, &wire.body(model, req), model)
        .await?;
    if req.stream && is_event_stream(&resp) {
        read_stream(wire, &mut resp, model, progress).await
    } else {
        let body = read_success_body(&mut resp, ep).await?;
        wire.parse_whole(&body, model)
    }
}

async fn read_stream<W: Wire>(
    wire: &W,
    resp: &mut reqwest::Response,
    model: &str,
    progress: Option<&ProgressFn>,
) -> Result<ChatResponse, ProviderError> {
    let ep = wire.endpoint();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut out = Assembly::new(model);
    loop {
        let eof = match ep.next_chunk(resp).await? {
            Some(c) => {
                parser
                    .push(c.as_ref(), &mut events)
                    .map_err(|e| ep.malformed(e))?;
                false
            }
            None => {
                parser.finish(&mut events).map_err(|e| ep.malformed(e))?;
                true
            }
        };
        for ev in events.drain(..) {
            if let Step::Done = wire.apply_event(&ev.data, &mut out, progress)? {
                drain(resp).await;
                return Ok(out.finish());
            }
        }
        if eof {
            wire.complete_at_eof(&out)?;
            return Ok(out.finish());
        }
    }
}

/// Arguments as a JSON value for formats that send an object: the model's
/// text when it parses as an object, else the text kept under `_raw` (the
/// model already got an error for it; the conversation must still replay).
pub(super) fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({ "_raw": arguments }),
    }
}
