//! The OpenAI chat-completions wire format, used for `openai`, `openrouter`,
//! `ollama` and custom OpenAI-compatible endpoints.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{Endpoint, with_timeout};
use super::wire::{self, Assembly, Step, Wire};
use super::{
    ChatRequest, ChatResponse, Message, ProgressFn, Provider, ProviderError, ToolCall, Usage,
};

/// Which OpenAI-compatible service an endpoint is, for its few quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiFlavor {
    /// api.openai.com: the output limit is `max_completion_tokens` (reasoning
    /// models reject `max_tokens`).
    OpenAi,
    /// OpenRouter: ask for the cost in the usage block (`usage: {include: true}`).
    OpenRouter,
    /// Ollama and custom endpoints: plain `max_tokens`.
    Generic,
}

/// A client for one OpenAI-compatible endpoint (`POST {base}/chat/completions`).
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    ep: Endpoint,
    flavor: OpenAiFlavor,
}

impl OpenAiProvider {
    pub(crate) fn new(ep: Endpoint, flavor: OpenAiFlavor) -> OpenAiProvider {
        OpenAiProvider { ep, flavor }
    }

    /// The request body.
    fn body(&self, model: &str, req: &ChatRequest) -> Value {
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        if !req.system.is_empty() {
            messages.push(json!({"role": "system", "content": req.system}));
        }
        for m in &req.messages {
            push_message(&mut messages, m);
        }
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("messages".into(), Value::Array(messages));
        body.insert("stream".into(), json!(req.stream));
        if let Some(t) = req.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(n) = req.max_tokens {
            let field = match self.flavor {
                OpenAiFlavor::OpenAi => "max_completion_tokens",
                _ => "max_tokens",
            };
            body.insert(field.into(), json!(n));
        }
        if !req.tools.is_empty() {
            let tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if req.stream {
            // Without this the stream carries no token counts at all.
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        if self.flavor == OpenAiFlavor::OpenRouter {
            body.insert("usage".into(), json!({"include": true}));
        }
        Value::Object(body)
    }

    fn headers(&self) -> Result<HeaderMap, ProviderError> {
        let mut h = HeaderMap::new();
        if let Some(key) = self.ep.key()? {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    ProviderError::Config {
                        provider: self.ep.name.clone(),
                        message: format!(
                            "{} contains characters not allowed in an HTTP header",
                            self.ep.key_env
                        ),
                    }
                })?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        if self.flavor == OpenAiFlavor::OpenRouter {
            // OpenRouter's app attribution; harmless elsewhere, so only sent there.
            h.insert("x-title", HeaderValue::from_static("dispatch"));
        }
        Ok(h)
    }
}

impl Wire for OpenAiProvider {
    fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.ep.base_url)
    }

    fn headers(&self) -> Result<HeaderMap, ProviderError> {
        OpenAiProvider::headers(self)
    }

    fn body(&self, model: &str, req: &ChatRequest) -> Value {
        OpenAiProvider::body(self, model, req)
    }

    fn parse_whole(&self, body: &[u8], model: &str) -> Result<ChatResponse, ProviderError> {
        parse_completion(&self.ep, body, model)
    }

    fn apply_event(
        &self,
        data: &str,
        out: &mut Assembly,
        progress: Option<&ProgressFn>,
    ) -> Result<Step, ProviderError> {
        if data.trim() == "[DONE]" {
            return Ok(Step::Done);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            self.ep
                .malformed(format!("invalid JSON in a stream chunk ({e})"))
        })?;
        apply_chunk(&self.ep, &v, out, progress)?;
        Ok(Step::More)
    }

    fn complete_at_eof(&self, out: &Assembly) -> Result<(), ProviderError> {
        // Some compatible servers close without `[DONE]`; a finish reason
        // says the answer is complete all the same.
        if out.response.finish_reason.is_some() {
            Ok(())
        } else {
            Err(self
                .ep
                .malformed("the stream ended before the answer was complete"))
        }
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.ep.name
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

/// One message in the OpenAI shape: an assistant turn with its
/// `tool_calls`, each tool result as a `tool` message, then any text.
fn push_message(messages: &mut Vec<Value>, m: &Message) {
    for r in &m.tool_results {
        messages.push(json!({"role": "tool", "tool_call_id": r.call_id, "content": r.content}));
    }
    if m.tool_calls.is_empty() {
        if m.tool_results.is_empty() || !m.content.is_empty() {
            messages.push(json!({"role": m.role.as_str(), "content": m.content}));
        }
        return;
    }
    let calls: Vec<Value> = m
        .tool_calls
        .iter()
        .map(|c| {
            json!({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect();
    let content = if m.content.is_empty() {
        Value::Null
    } else {
        json!(m.content)
    };
    messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
}

/// Fold one stream chunk into the answer so far.
fn apply_chunk(
    ep: &Endpoint,
    v: &Value,
    asm: &mut Assembly,
    progress: Option<&ProgressFn>,
) -> Result<(), ProviderError> {
    let out = &mut asm.response;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(in_band_error(ep, err));
    }
    if let Some(m) = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    {
        out.model = m.to_string();
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let (usage, cost) = parse_usage(u);
        out.usage = usage;
        out.reported_cost_usd = cost.or(out.reported_cost_usd);
    }
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        if let Some(delta) = choice.get("delta") {
            let t = content_text(delta.get("content"));
            if !t.is_empty() {
                ep.append_text(&mut out.text, &t)?;
                if let Some(p) = progress {
                    p(&t);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for c in calls {
                    apply_call_delta(ep, c, asm)?;
                }
            }
        }
        if let Some(fr) = choice.get("finish_reason").and_then(Value::as_str) {
            asm.response.finish_reason = Some(fr.to_string());
        }
    }
    Ok(())
}

/// One `tool_calls` delta: the first names the call (`id`, `function.name`),
/// later ones under the same `index` add to its arguments.
fn apply_call_delta(ep: &Endpoint, c: &Value, asm: &mut Assembly) -> Result<(), ProviderError> {
    let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
    let f = c.get("function");
    let call = asm.call(index);
    if let Some(id) = c
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        call.id = id.to_string();
    }
    if let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) {
        call.name.push_str(name);
    }
    if let Some(args) = f.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
        asm.push_arguments(ep, index, args)?;
    }
    Ok(())
}

/// The `tool_calls` of a whole message.
fn whole_calls(message: &Value) -> Vec<ToolCall> {
    let Some(calls) = message.get("tool_calls").and_then(Value::as_array) else {
        return Vec::new();
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c.get("function");
            let text = |v: Option<&Value>| match v {
                Some(Value::String(s)) => s.clone(),
                // Some servers send the arguments as an object.
                Some(v @ Value::Object(_)) => v.to_string(),
                _ => String::new(),
            };
            let arguments = text(f.and_then(|f| f.get("arguments")));
            ToolCall {
                id: c
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| format!("call_{i}"), str::to_string),
                name: text(f.and_then(|f| f.get("name"))),
                arguments: if arguments.trim().is_empty() {
                    "{}".into()
                } else {
                    arguments
                },
            }
        })
        .collect()
}

/// Parse a whole (non-streamed) completion.
pub(crate) fn parse_completion(
    ep: &Endpoint,
    body: &[u8],
    model: &str,
) -> Result<ChatResponse, ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ep.malformed(format!("the answer is not valid JSON ({e})")))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(in_band_error(ep, err));
    }
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| ep.malformed("the answer has no `choices`"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| ep.malformed("the answer's first choice has no `message`"))?;
    let (usage, cost) = v.get("usage").map(parse_usage).unwrap_or_default();
    Ok(ChatResponse {
        text: content_text(message.get("content")),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(model)
            .to_string(),
        usage,
        reported_cost_usd: cost,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        tool_calls: whole_calls(message),
    })
}

/// Message content: a string, or (some servers) an array of `{type: text, text}` parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Token counts and OpenRouter's `cost` from a usage block. Lenient: a missing
/// or odd field is zero / absent rather than a failed call.
fn parse_usage(u: &Value) -> (Usage, Option<f64>) {
    let n = |a: &str, b: &str| {
        u.get(a)
            .and_then(Value::as_u64)
            .or_else(|| u.get(b).and_then(Value::as_u64))
            .unwrap_or(0)
    };
    let usage = Usage {
        input_tokens: n("prompt_tokens", "input_tokens"),
        output_tokens: n("completion_tokens", "output_tokens"),
    };
    (usage, u.get("cost").and_then(Value::as_f64))
}

/// An error object inside a 2xx answer (OpenRouter relays upstream failures
/// this way, with an HTTP-like `code`).
fn in_band_error(ep: &Endpoint, err: &Value) -> ProviderError {
    let msg = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| err.as_str().map(str::to_string))
        .unwrap_or_else(|| err.to_string());
    match err.get("code").filter(|c| c.is_number() || c.is_string()) {
        Some(code) => ep.upstream(format!(
            "{msg} (code {})",
            code.to_string().trim_matches('"')
        )),
        None => ep.upstream(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::secret::ApiKey;

    fn ep() -> Endpoint {
        Endpoint {
            name: "openrouter".into(),
            base_url: "http://127.0.0.1:1/v1".into(),
            key: Some(ApiKey::new("sk-or-v1-0123456789")),
            key_env: "OPENROUTER_API_KEY".into(),
            key_required: true,
            base_url_env: "OPENROUTER_BASE_URL".into(),
            client: crate::provider::http::build_client(Duration::from_secs(1)).unwrap(),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn body_per_flavor() {
        let req = ChatRequest {
            system: "sys".into(),
            messages: vec![Message::user("hi")],
            temperature: Some(0.3),
            max_tokens: Some(100),
            stream: true,
            tools: Vec::new(),
        };
        let b = OpenAiProvider::new(ep(), OpenAiFlavor::OpenRouter)
            .body("anthropic/claude-sonnet-4", &req);
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(b["messages"][1], json!({"role": "user", "content": "hi"}));
        assert_eq!(b["usage"], json!({"include": true}));
        assert_eq!(b["stream_options"], json!({"include_usage": true}));
        assert_eq!(b["max_tokens"], json!(100));
        let b = OpenAiProvider::new(ep(), OpenAiFlavor::OpenAi).body(
            "gpt-4o",
            &ChatRequest {
                stream: false,
                system: String::new(),
                ..req
            },
        );
        assert_eq!(b["max_completion_tokens"], json!(100));
        assert!(b.get("usage").is_none() && b.get("stream_options").is_none());
        assert_eq!(b["messages"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn parses_completions_leniently() {
        let r = parse_completion(
            &ep(),
            br#"{"model":"m-1","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"cost":0.001}}"#,
            "m",
        )
        .unwrap();
        assert_eq!((r.text.as_str(), r.model.as_str()), ("hi", "m-1"));
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (3, 4));
        assert_eq!(r.reported_cost_usd, Some(0.001));
        let r =
            parse_completion(&ep(), br#"{"choices":[{"message":{"content":null}}]}"#, "m").unwrap();
        assert_eq!(
            (r.text.as_str(), r.model.as_str(), r.usage),
            ("", "m", Usage::default())
        );
    }

    #[test]
    fn malformed_and_in_band_errors() {
        assert!(matches!(
            parse_completion(&ep(), b"{oops", "m"),
            Err(ProviderError::Malformed { .. })
        ));
        assert!(matches!(
            parse_completion(&ep(), b"{}", "m"),
            Err(ProviderError::Malformed { .. })
        ));
        let e = parse_completion(
            &ep(),
            br#"{"error":{"code":502,"message":"upstream died, key sk-or-v1-0123456789"}}"#,
            "m",
        )
        .unwrap_err();
        assert!(matches!(e, ProviderError::Upstream { .. }) && e.is_retryable());
        assert!(!e.to_string().contains("0123456789"), "{e}");
        assert!(e.to_string().contains("code 502"), "{e}");
    }

    #[test]
    fn tools_and_tool_turns_in_the_body() {
        use crate::provider::{ToolCall, ToolResult, ToolSpec};
        let call = ToolCall {
            id: "c1".into(),
            name: "kb_read".into(),
            arguments: r#"{"path":"a.md"}"#.into(),
        };
        let req = ChatRequest {
            messages: vec![
                Message::user("go"),
                Message::assistant_calls("", vec![call]),
                Message::results(vec![ToolResult {
                    call_id: "c1".into(),
                    name: "kb_read".into(),
                    content: "text".into(),
                    is_error: false,
                }]),
            ],
            tools: vec![ToolSpec {
                name: "kb_read".into(),
                description: "reads".into(),
                parameters: json!({"type": "object"}),
            }],
            ..ChatRequest::default()
        };
        let b = OpenAiProvider::new(ep(), OpenAiFlavor::Generic).body("m", &req);
        assert_eq!(b["tools"][0]["type"], "function");
        assert_eq!(b["tools"][0]["function"]["name"], "kb_read");
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[1]["content"], Value::Null);
        assert_eq!(
            m[1]["tool_calls"][0]["function"]["arguments"],
            r#"{"path":"a.md"}"#
        );
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "text"})
        );
    }

    #[test]
    fn whole_and_streamed_tool_calls() {
        let body = json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "x", "arguments": "{\"k\":1}"}},
            {"function": {"name": "y", "arguments": {"o": 2}}}
        ]}, "finish_reason": "tool_calls"}]})
        .to_string();
        let r = parse_completion(&ep(), body.as_bytes(), "m").unwrap();
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(
            (
                r.tool_calls[0].id.as_str(),
                r.tool_calls[0].arguments.as_str()
            ),
            ("a", r#"{"k":1}"#)
        );
        assert_eq!(
            (
                r.tool_calls[1].id.as_str(),
                r.tool_calls[1].arguments.as_str()
            ),
            ("call_1", r#"{"o":2}"#)
        );
        // Deltas of two calls, interleaved, assembled by index.
        const PIECE_A: &str = "{\"pa";
        const PIECE_B: &str = "th\":1}";
        let mut asm = Assembly::default();
        let chunks = [
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"p","function":{"name":"kb_","arguments":""}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":1,"id":"q","function":{"name":"other","arguments":"{}"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"read","arguments":PIECE_A}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":PIECE_B}}]}}]}),
            json!({"choices":[{"delta":{},"finish_reason":"tool_calls"}]}),
        ];
        for c in &chunks {
            apply_chunk(&ep(), c, &mut asm, None).unwrap();
        }
        let r = asm.finish();
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].name, "kb_read");
        assert_eq!(r.tool_calls[0].arguments, r#"{"path":1}"#);
        assert_eq!(r.tool_calls[1].id, "q");
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    }
}
