//! The Anthropic Messages wire format (`POST {base}/v1/messages`).

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{Endpoint, with_timeout};
use super::wire::{self, Assembly, Step, Wire};
use super::{
    ANTHROPIC_DEFAULT_MAX_TOKENS, ChatRequest, ChatResponse, Message, ProgressFn, Provider,
    ProviderError, ToolCall, Usage,
};

/// The API version we speak; Anthropic requires the header.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A client for one Anthropic Messages endpoint.
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    ep: Endpoint,
}

impl AnthropicProvider {
    pub(crate) fn new(ep: Endpoint) -> AnthropicProvider {
        AnthropicProvider { ep }
    }

    /// The request body: the system prompt goes in `system`, not in the
    /// messages, and `max_tokens` is required.
    fn body(&self, model: &str, req: &ChatRequest) -> Value {
        let messages: Vec<Value> = req.messages.iter().map(message).collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert(
            "max_tokens".into(),
            json!(req.max_tokens.unwrap_or(ANTHROPIC_DEFAULT_MAX_TOKENS)),
        );
        if !req.system.is_empty() {
            body.insert("system".into(), json!(req.system));
        }
        body.insert("messages".into(), Value::Array(messages));
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), json!(t));
        }
        body.insert("stream".into(), json!(req.stream));
        if !req.tools.is_empty() {
            let tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        Value::Object(body)
    }

    fn headers(&self) -> Result<HeaderMap, ProviderError> {
        let mut h = HeaderMap::new();
        if let Some(key) = self.ep.key()? {
            let mut v = HeaderValue::from_str(key.expose()).map_err(|_| ProviderError::Config {
                provider: self.ep.name.clone(),
                message: format!(
                    "{} contains characters not allowed in an HTTP header",
                    self.ep.key_env
                ),
            })?;
            v.set_sensitive(true);
            h.insert("x-api-key", v);
        }
        h.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        Ok(h)
    }
}

impl Wire for AnthropicProvider {
    fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    fn url(&self) -> String {
        format!("{}/v1/messages", self.ep.base_url)
    }

    fn headers(&self) -> Result<HeaderMap, ProviderError> {
        AnthropicProvider::headers(self)
    }

    fn body(&self, model: &str, req: &ChatRequest) -> Value {
        AnthropicProvider::body(self, model, req)
    }

    fn parse_whole(&self, body: &[u8], model: &str) -> Result<ChatResponse, ProviderError> {
        parse_message(&self.ep, body, model)
    }

    fn apply_event(
        &self,
        data: &str,
        out: &mut Assembly,
        progress: Option<&ProgressFn>,
    ) -> Result<Step, ProviderError> {
        let v: Value = serde_json::from_str(data).map_err(|e| {
            self.ep
                .malformed(format!("invalid JSON in a stream event ({e})"))
        })?;
        apply_event(&self.ep, &v, out, progress)
    }

    fn complete_at_eof(&self, _out: &Assembly) -> Result<(), ProviderError> {
        Err(self.ep.malformed("the stream ended before `message_stop`"))
    }
}

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.ep.name
    }

    fn default_max_tokens(&self) -> Option<u32> {
        Some(ANTHROPIC_DEFAULT_MAX_TOKENS)
    }

    async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        timeout: Duration,
        progress: Option<&ProgressFn>,
    ) -> Result<ChatResponse, ProviderError> {
        with_timeout(
            &self.ep.name,
            timeout,
            wire::run(self, model, req, progress),
        )
        .await
    }
}

/// One message in the Anthropic shape: plain text as a string; an assistant
/// turn with calls, or a user turn with results, as content blocks.
fn message(m: &Message) -> Value {
    if m.tool_calls.is_empty() && m.tool_results.is_empty() {
        return json!({"role": m.role.as_str(), "content": m.content});
    }
    let mut blocks = Vec::new();
    for r in &m.tool_results {
        blocks.push(json!({"type": "tool_result", "tool_use_id": r.call_id,
                           "content": r.content, "is_error": r.is_error}));
    }
    if !m.content.is_empty() {
        blocks.push(json!({"type": "text", "text": m.content}));
    }
    for c in &m.tool_calls {
        blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name,
                           "input": wire::arguments_object(&c.arguments)}));
    }
    json!({"role": m.role.as_str(), "content": blocks})
}

/// Input tokens including prompt-cache reads and writes (billed too, at other
/// rates; the price table has one input rate, so this slightly misprices
/// cached prompts rather than dropping them).
fn input_tokens(u: &Value) -> u64 {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| u.get(*k).and_then(Value::as_u64))
    .sum()
}

/// Fold one stream event into the answer; done at `message_stop`.
fn apply_event(
    ep: &Endpoint,
    v: &Value,
    asm: &mut Assembly,
    progress: Option<&ProgressFn>,
) -> Result<Step, ProviderError> {
    let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
    let out = &mut asm.response;
    match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "message_start" => {
            let msg = v.get("message");
            if let Some(m) = msg.and_then(|m| m.get("model")).and_then(Value::as_str) {
                out.model = m.to_string();
            }
            if let Some(u) = msg.and_then(|m| m.get("usage")) {
                out.usage.input_tokens = input_tokens(u);
                out.usage.output_tokens =
                    u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
            }
        }
        "content_block_start" => {
            let block = v.get("content_block");
            if block.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("tool_use") {
                let text = |k: &str| {
                    block
                        .and_then(|b| b.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let call = asm.call(index);
                call.id = text("id");
                call.name = text("name");
            }
        }
        "content_block_delta" => {
            let delta = v.get("delta");
            // Thinking deltas are not the answer; tool input is a call's.
            match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                Some("text_delta") => {
                    if let Some(t) = delta.and_then(|d| d.get("text")).and_then(Value::as_str)
                        && !t.is_empty()
                    {
                        ep.append_text(&mut out.text, t)?;
                        if let Some(p) = progress {
                            p(t);
                        }
                    }
                }
                Some("input_json_delta") => {
                    if let Some(j) = delta
                        .and_then(|d| d.get("partial_json"))
                        .and_then(Value::as_str)
                    {
                        asm.push_arguments(ep, index, j)?;
                    }
                }
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(r) = v
                .get("delta")
                .and_then(|d| d.get("stop_reason"))
                .and_then(Value::as_str)
            {
                out.finish_reason = Some(r.to_string());
            }
            // Counts here are cumulative; newer API versions repeat input too.
            if let Some(u) = v.get("usage") {
                if let Some(o) = u.get("output_tokens").and_then(Value::as_u64) {
                    out.usage.output_tokens = out.usage.output_tokens.max(o);
                }
                out.usage.input_tokens = out.usage.input_tokens.max(input_tokens(u));
            }
        }
        "message_stop" => return Ok(Step::Done),
        "error" => return Err(error_event(ep, v)),
        // ping, content_block_stop, and event types added later.
        _ => {}
    }
    Ok(Step::More)
}

/// An `error` event or error body (`{type: error, error: {type, message}}`).
fn error_event(ep: &Endpoint, v: &Value) -> ProviderError {
    let err = v.get("error");
    let kind = err
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("error");
    let msg = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    ep.upstream(format!("{kind}: {msg}"))
}

/// Parse a whole (non-streamed) message.
pub(crate) fn parse_message(
    ep: &Endpoint,
    body: &[u8],
    model: &str,
) -> Result<ChatResponse, ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ep.malformed(format!("the answer is not valid JSON ({e})")))?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_event(ep, &v));
    }
    let content = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ep.malformed("the answer has no `content`"))?;
    let text: String = content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let usage = v
        .get("usage")
        .map(|u| Usage {
            input_tokens: input_tokens(u),
            output_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        text,
        model: v
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(model)
            .to_string(),
        usage,
        reported_cost_usd: None,
        finish_reason: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        tool_calls: content
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .enumerate()
            .map(|(i, b)| ToolCall {
                id: b
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| format!("call_{i}"), str::to_string),
                name: b
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                arguments: b.get("input").map_or_else(|| "{}".into(), Value::to_string),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            name: "anthropic".into(),
            base_url: "http://127.0.0.1:1".into(),
            key: None,
            key_env: "ANTHROPIC_API_KEY".into(),
            key_required: true,
            base_url_env: "ANTHROPIC_BASE_URL".into(),
            client: crate::provider::http::build_client(Duration::from_secs(1)).unwrap(),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn body_has_system_and_default_max_tokens() {
        let b = AnthropicProvider::new(ep())
            .body("claude-sonnet-4", &ChatRequest::new("be brief", "hi"));
        assert_eq!(b["system"], json!("be brief"));
        assert_eq!(b["max_tokens"], json!(4096));
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));
        let req = ChatRequest {
            messages: vec![
                Message::user("a"),
                Message::assistant("b"),
                Message::user("c"),
            ],
            max_tokens: Some(10),
            ..ChatRequest::default()
        };
        let b = AnthropicProvider::new(ep()).body("m", &req);
        assert!(b.get("system").is_none());
        assert_eq!(b["max_tokens"], json!(10));
        assert_eq!(b["messages"][1]["role"], json!("assistant"));
    }

    #[test]
    fn missing_key_is_reported_before_any_request() {
        let e = AnthropicProvider::new(ep()).headers().unwrap_err();
        assert_eq!(
            e.to_string(),
            "ANTHROPIC_API_KEY is not set: export it before starting dispatch"
        );
    }

    #[test]
    fn parses_messages() {
        let r = parse_message(
            &ep(),
            br#"{"type":"message","model":"claude-x","content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"cache_read_input_tokens":2,"output_tokens":7}}"#,
            "m",
        )
        .unwrap();
        assert_eq!(r.text, "Hello");
        assert_eq!(r.model, "claude-x");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (7, 7));
        assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
        let e = parse_message(
            &ep(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            "m",
        )
        .unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("overloaded_error"),
            "{e}"
        );
        assert!(matches!(
            parse_message(&ep(), b"[]", "m"),
            Err(ProviderError::Malformed { .. })
        ));
    }

    #[test]
    fn tool_use_blocks_whole_streamed_and_sent_back() {
        use crate::provider::{ToolCall, ToolResult};
        let r = parse_message(
            &ep(),
            br#"{"type":"message","content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"tu_1","name":"kb_list","input":{"path":"context"}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":1}}"#,
            "m",
        )
        .unwrap();
        assert_eq!(r.text, "Let me look.");
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].id, "tu_1");
        assert_eq!(r.tool_calls[0].arguments, r#"{"path":"context"}"#);
        let mut asm = Assembly::default();
        let events = [
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hm."}}),
            json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu_2","name":"kb_read","input":{}}}),
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\": "}}),
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"a.md\"}"}}),
            json!({"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"tu_3","name":"kb_list","input":{}}}),
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use"}}),
        ];
        for e in &events {
            assert!(matches!(
                apply_event(&ep(), e, &mut asm, None).unwrap(),
                Step::More
            ));
        }
        let r = asm.finish();
        assert_eq!(r.text, "Hm.");
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].arguments, r#"{"path": "a.md"}"#);
        // No input at all is an empty object.
        assert_eq!(r.tool_calls[1].arguments, "{}");
        // Sent back: calls as tool_use blocks, results as tool_result blocks.
        let req = ChatRequest {
            messages: vec![
                Message::user("go"),
                Message::assistant_calls(
                    "Hm.",
                    vec![ToolCall {
                        id: "tu_2".into(),
                        name: "kb_read".into(),
                        arguments: "not json".into(),
                    }],
                ),
                Message::results(vec![ToolResult {
                    call_id: "tu_2".into(),
                    name: "kb_read".into(),
                    content: "bad arguments".into(),
                    is_error: true,
                }]),
            ],
            ..ChatRequest::default()
        };
        let b = AnthropicProvider::new(ep()).body("m", &req);
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m[1]["content"][0], json!({"type": "text", "text": "Hm."}));
        assert_eq!(m[1]["content"][1]["type"], "tool_use");
        assert_eq!(m[1]["content"][1]["input"], json!({"_raw": "not json"}));
        assert_eq!(
            m[2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "tu_2", "content": "bad arguments", "is_error": true})
        );
    }
}
