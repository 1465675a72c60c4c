//! OpenAI Chat Completions (and compatible servers): `POST {base}/chat/completions`
//! with the base ending in `/v1`; SSE chunks whose `delta` carries text and `tool_calls`
//! fragments keyed by `index`; usage in the last chunk (`stream_options.include_usage`);
//! `data: [DONE]` at the end.

use std::collections::BTreeMap;

use reqwest::RequestBuilder;
use serde_json::{json, Map, Value};

use crate::sse::SseDecoder;
use crate::transport::{
    generic_error_info, one_line, ErrorInfo, Failure, OnEvent, StreamState, TransientKind, Wire,
};
use crate::{
    invalid_tool_input, parse_tool_input, ContentBlock, Message, ModelRequest, ModelResponse,
    ProviderConfig, ProviderKind, Role, StopReason, StreamEvent, Usage,
};

pub(crate) struct OpenAi;

impl Wire for OpenAi {
    const KIND: ProviderKind = ProviderKind::OpenAi;
    const PATH: &'static str = "/chat/completions";
    type State = OpenAiStream;

    fn headers(rb: RequestBuilder, config: &ProviderConfig) -> RequestBuilder {
        match config.api_key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => rb.bearer_auth(key),
            _ => rb,
        }
    }

    fn body(
        request: &ModelRequest,
        model: &str,
        max_tokens: u32,
        config: &ProviderConfig,
    ) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        let mut messages = Vec::new();
        if !request.system.is_empty() {
            messages.push(json!({"role": "system", "content": request.system}));
        }
        for msg in &request.messages {
            push_message(&mut messages, msg);
        }
        body.insert("messages".into(), Value::Array(messages));
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.input_schema}})
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        // OpenAI's own API has replaced `max_tokens` (refused by its reasoning models);
        // compatible servers (vLLM, llama.cpp, LM Studio...) know `max_tokens`.
        let official = config.base_url.contains("://api.openai.com");
        let key = if official {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), json!(max_tokens));
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
        Value::Object(body)
    }

    fn error_info(body: &str) -> ErrorInfo {
        generic_error_info(body)
    }

    fn parse_full(body: &[u8], on_event: OnEvent<'_>) -> Result<ModelResponse, Failure> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Failure::malformed(format!("the reply is not valid JSON: {e}")))?;
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(err));
        }
        let mut state = OpenAiStream::new();
        if let Some(usage) = value.get("usage") {
            state.read_usage(usage);
        }
        let choice = value
            .pointer("/choices/0")
            .ok_or_else(|| Failure::malformed("the reply has no choices"))?;
        let message = choice.get("message").unwrap_or(&Value::Null);
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                on_event(StreamEvent::TextDelta {
                    text: text.to_string(),
                });
            }
            state.text.push_str(text);
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            for (i, call) in calls.iter().enumerate() {
                let mut fragment = call.clone();
                fragment["index"] = json!(i);
                state.tool_fragment(&fragment, &mut *on_event);
            }
        }
        state.finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        state.done = true;
        state.finish()
    }
}

/// Appends one protocol message: tool results become `tool` messages (first, right
/// after the assistant's `tool_calls`), text becomes a `user` / `assistant` message.
fn push_message(out: &mut Vec<Value>, msg: &Message) {
    match msg.role {
        Role::User => {
            let mut text = String::new();
            for block in &msg.content {
                match block {
                    ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } => {
                        // The API has no error flag; say it in the content.
                        let content = if *is_error && !content.starts_with("Error") {
                            format!("Error: {content}")
                        } else {
                            content.clone()
                        };
                        out.push(
                            json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}),
                        );
                    }
                    ContentBlock::Text { text: t } => {
                        if !text.is_empty() && !t.is_empty() {
                            text.push_str("\n\n");
                        }
                        text.push_str(t);
                    }
                    ContentBlock::ToolUse { .. } => {}
                }
            }
            if !text.is_empty() {
                out.push(json!({"role": "user", "content": text}));
            }
        }
        Role::Assistant => {
            let text = msg.text();
            let calls: Vec<Value> = msg
                .tool_uses()
                .map(|(id, name, input)| {
                    // Invalid arguments go back as the model wrote them.
                    let arguments = match invalid_tool_input(input) {
                        Some(raw) => raw.to_string(),
                        None => input.to_string(),
                    };
                    json!({"id": id, "type": "function",
                           "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            if text.is_empty() && calls.is_empty() {
                return;
            }
            let mut m = json!({"role": "assistant",
                               "content": if text.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            out.push(m);
        }
    }
}

#[derive(Debug, Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
    announced: bool,
}

pub(crate) struct OpenAiStream {
    sse: SseDecoder,
    text: String,
    calls: BTreeMap<u64, Call>,
    finish_reason: Option<String>,
    usage: Usage,
    started: bool,
    done: bool,
}

impl OpenAiStream {
    fn read_usage(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        if let Some(input) = n("prompt_tokens") {
            self.usage.input_tokens = input;
        }
        if let Some(output) = n("completion_tokens") {
            self.usage.output_tokens = output;
        }
    }

    /// One element of `delta.tool_calls` (or of a full message's `tool_calls`).
    fn tool_fragment(&mut self, fragment: &Value, on_event: OnEvent<'_>) {
        let id = fragment.get("id").and_then(Value::as_str).unwrap_or("");
        // Some compatible servers omit `index`: a new id starts a new call, otherwise
        // the fragment continues the last one.
        let index = match fragment.get("index").and_then(Value::as_u64) {
            Some(i) => i,
            None => {
                let last = self.calls.keys().next_back().copied();
                match last {
                    Some(i) if id.is_empty() || self.calls.get(&i).is_some_and(|c| c.id == id) => i,
                    Some(i) => i + 1,
                    None => 0,
                }
            }
        };
        let call = self.calls.entry(index).or_default();
        if !id.is_empty() && call.id.is_empty() {
            call.id = id.to_string();
        }
        if let Some(function) = fragment.get("function") {
            if let Some(name) = function.get("name").and_then(Value::as_str) {
                if call.name.is_empty() {
                    call.name = name.to_string();
                } else if !call.announced {
                    call.name.push_str(name);
                }
            }
            match function.get("arguments") {
                Some(Value::String(piece)) => call.arguments.push_str(piece),
                // Some servers send an object rather than a JSON string.
                Some(v @ Value::Object(_)) => call.arguments.push_str(&v.to_string()),
                _ => {}
            }
        }
        if !call.announced && !call.name.is_empty() {
            if call.id.is_empty() {
                call.id = format!("call_{:016x}", fastrand::u64(..));
            }
            call.announced = true;
            on_event(StreamEvent::ToolCallStarted {
                id: call.id.clone(),
                name: call.name.clone(),
            });
        }
    }

    fn data(&mut self, data: &str, on_event: OnEvent<'_>) -> Result<(), Failure> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            Failure::malformed(format!(
                "a chunk is not valid JSON ({e}): {}",
                one_line(data, 120)
            ))
        })?;
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(err));
        }
        self.started = true;
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.read_usage(usage);
        }
        let Some(choices) = value.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        // Only the first choice is used (`n` is never set).
        let Some(choice) = choices
            .iter()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        else {
            return Ok(());
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(piece) = delta.get("content").and_then(Value::as_str) {
                if !piece.is_empty() {
                    self.text.push_str(piece);
                    on_event(StreamEvent::TextDelta {
                        text: piece.to_string(),
                    });
                }
            }
            if let Some(fragments) = delta.get("tool_calls").and_then(Value::as_array) {
                for fragment in fragments {
                    self.tool_fragment(fragment, &mut *on_event);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
        Ok(())
    }
}

/// An `{"error": ...}` object where a chunk was expected.
fn stream_error(err: &Value) -> Failure {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("unknown error");
    let code = err
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| err.get("type").and_then(Value::as_str))
        .unwrap_or("");
    let detail = format!("error mid-stream: {}", one_line(message, 200));
    if code.contains("rate_limit") {
        Failure::retry(TransientKind::RateLimited, detail)
    } else {
        Failure::retry(TransientKind::Server, detail)
    }
}

impl StreamState for OpenAiStream {
    fn new() -> Self {
        OpenAiStream {
            sse: SseDecoder::new(),
            text: String::new(),
            calls: BTreeMap::new(),
            finish_reason: None,
            usage: Usage::default(),
            started: false,
            done: false,
        }
    }

    fn feed(&mut self, bytes: &[u8], on_event: OnEvent<'_>) -> Result<bool, Failure> {
        self.sse.push(bytes);
        while let Some(event) = self.sse.next_event() {
            self.data(&event.data, &mut *on_event)?;
            if self.done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn finish(self) -> Result<ModelResponse, Failure> {
        if !self.done {
            return Err(Failure::cut(if self.started {
                "the stream ended before data: [DONE]"
            } else {
                "the stream ended before its first chunk"
            }));
        }
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(ContentBlock::Text { text: self.text });
        }
        let has_calls = !self.calls.is_empty();
        for call in self.calls.into_values() {
            let id = if call.id.is_empty() {
                format!("call_{:016x}", fastrand::u64(..))
            } else {
                call.id
            };
            content.push(ContentBlock::ToolUse {
                id,
                name: call.name,
                input: parse_tool_input(&call.arguments),
            });
        }
        let stop_reason = match self.finish_reason.as_deref() {
            Some("length") => StopReason::MaxTokens,
            _ if has_calls => StopReason::ToolUse,
            Some("stop") | None => StopReason::EndTurn,
            Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
            Some(other) => StopReason::Other(other.to_string()),
        };
        Ok(ModelResponse {
            message: Message {
                role: Role::Assistant,
                content,
            },
            usage: self.usage,
            stop_reason,
        })
    }
}
