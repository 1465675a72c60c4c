//! Anthropic Messages: `POST {base}/v1/messages`, SSE events `message_start`,
//! `content_block_start/delta/stop` (`text_delta`, `input_json_delta`),
//! `message_delta`, `message_stop`, `ping`, `error`.

use std::collections::BTreeMap;

use reqwest::RequestBuilder;
use serde_json::{json, Map, Value};

use crate::sse::SseDecoder;
use crate::transport::{
    generic_error_info, one_line, ErrorInfo, Failure, OnEvent, StreamState, TransientKind, Wire,
};
use crate::{
    parse_tool_input, ContentBlock, LlmError, Message, ModelRequest, ModelResponse, ProviderConfig,
    ProviderKind, Role, StopReason, StreamEvent, Usage,
};

pub(crate) const API_VERSION: &str = "2023-06-01";

pub(crate) struct Anthropic;

impl Wire for Anthropic {
    const KIND: ProviderKind = ProviderKind::Anthropic;
    const PATH: &'static str = "/v1/messages";
    type State = AnthropicStream;

    fn headers(rb: RequestBuilder, config: &ProviderConfig) -> RequestBuilder {
        let rb = rb
            .header("anthropic-version", API_VERSION)
            .header("accept", "text/event-stream");
        match &config.api_key {
            Some(key) => rb.header("x-api-key", key.trim()),
            None => rb,
        }
    }

    fn body(request: &ModelRequest, model: &str, max_tokens: u32, _: &ProviderConfig) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert("max_tokens".into(), json!(max_tokens));
        body.insert("stream".into(), json!(true));
        if !request.system.is_empty() {
            // A cache breakpoint on the system prompt: it (and the tools before it) is
            // the same on every turn.
            body.insert(
                "system".into(),
                json!([{"type": "text", "text": request.system,
                        "cache_control": {"type": "ephemeral"}}]),
            );
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| {
                    json!({"name": t.name, "description": t.description,
                           "input_schema": t.input_schema})
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        let mut messages: Vec<Value> = request.messages.iter().filter_map(message).collect();
        // A second breakpoint on the newest block caches the conversation so far.
        if let Some(last) = messages
            .last_mut()
            .and_then(|m| m.get_mut("content"))
            .and_then(Value::as_array_mut)
            .and_then(|blocks| blocks.last_mut())
            .and_then(Value::as_object_mut)
        {
            last.insert("cache_control".into(), json!({"type": "ephemeral"}));
        }
        body.insert("messages".into(), Value::Array(messages));
        Value::Object(body)
    }

    fn error_info(body: &str) -> ErrorInfo {
        generic_error_info(body)
    }

    fn parse_full(body: &[u8], on_event: OnEvent<'_>) -> Result<ModelResponse, Failure> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Failure::malformed(format!("the reply is not valid JSON: {e}")))?;
        if value.get("type").and_then(Value::as_str) == Some("error") {
            return Err(stream_error(&value));
        }
        let mut state = AnthropicStream::new();
        if let Some(usage) = value.get("usage") {
            state.read_usage(usage);
        }
        let blocks = value
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::malformed("the reply has no `content`"))?;
        for (i, block) in blocks.iter().enumerate() {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = str_field(block, "text");
                    if !text.is_empty() {
                        on_event(StreamEvent::TextDelta { text: text.clone() });
                    }
                    state.blocks.insert(i as u64, Block::Text(text));
                }
                Some("tool_use") => {
                    let id = str_field(block, "id");
                    let name = str_field(block, "name");
                    on_event(StreamEvent::ToolCallStarted {
                        id: id.clone(),
                        name: name.clone(),
                    });
                    let input = block.get("input").cloned().unwrap_or(json!({}));
                    state.blocks.insert(
                        i as u64,
                        Block::Tool {
                            id,
                            name,
                            json: input.to_string(),
                            streamed: true,
                        },
                    );
                }
                _ => {}
            }
        }
        state.stop = value
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        state.done = true;
        state.finish()
    }
}

/// One protocol message as an Anthropic message, or `None` if nothing of it can be
/// sent (the API refuses empty content).
fn message(msg: &Message) -> Option<Value> {
    let mut results = Vec::new();
    let mut others = Vec::new();
    for block in &msg.content {
        match block {
            ContentBlock::Text { text } => {
                if !text.is_empty() {
                    others.push(json!({"type": "text", "text": text}));
                }
            }
            ContentBlock::ToolUse { id, name, input } => {
                let input = if input.is_object() {
                    input.clone()
                } else {
                    json!({})
                };
                others.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut block = json!({"type": "tool_result", "tool_use_id": tool_use_id,
                                       "content": content});
                if *is_error {
                    block["is_error"] = json!(true);
                }
                results.push(block);
            }
        }
    }
    // Tool results must come first in their message.
    results.extend(others);
    if results.is_empty() {
        return None;
    }
    let role = match msg.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    Some(json!({"role": role, "content": results}))
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[derive(Debug)]
enum Block {
    Text(String),
    Tool {
        id: String,
        name: String,
        json: String,
        /// Whether an `input_json_delta` has arrived (it replaces the initial input).
        streamed: bool,
    },
    /// A block kind this client does not use (thinking, server tools...).
    Other,
}

pub(crate) struct AnthropicStream {
    sse: SseDecoder,
    blocks: BTreeMap<u64, Block>,
    usage: Usage,
    stop: Option<String>,
    started: bool,
    done: bool,
}

impl AnthropicStream {
    fn read_usage(&mut self, usage: &Value) {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        // Cached prompt tokens are input tokens too.
        let input = [
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ]
        .iter()
        .filter_map(|k| n(k))
        .reduce(|a, b| a + b);
        if let Some(input) = input {
            self.usage.input_tokens = input;
        }
        if let Some(output) = n("output_tokens") {
            self.usage.output_tokens = output;
        }
    }

    fn event(&mut self, name: &str, data: &str, on_event: OnEvent<'_>) -> Result<(), Failure> {
        let value: Value = serde_json::from_str(data).map_err(|e| {
            Failure::malformed(format!(
                "a `{name}` event is not valid JSON ({e}): {}",
                one_line(data, 120)
            ))
        })?;
        let kind = value.get("type").and_then(Value::as_str).unwrap_or(name);
        match kind {
            "message_start" => {
                self.started = true;
                if let Some(usage) = value.pointer("/message/usage") {
                    self.read_usage(usage);
                }
            }
            "content_block_start" => {
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = value.get("content_block").unwrap_or(&Value::Null);
                let block = match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = str_field(block, "text");
                        if !text.is_empty() {
                            on_event(StreamEvent::TextDelta { text: text.clone() });
                        }
                        Block::Text(text)
                    }
                    Some("tool_use") => {
                        let id = str_field(block, "id");
                        let name = str_field(block, "name");
                        on_event(StreamEvent::ToolCallStarted {
                            id: id.clone(),
                            name: name.clone(),
                        });
                        // Input normally streams as `input_json_delta`; a non-empty
                        // initial input is kept in case no delta follows.
                        let json = match block.get("input") {
                            Some(Value::Object(m)) if !m.is_empty() => {
                                Value::Object(m.clone()).to_string()
                            }
                            _ => String::new(),
                        };
                        Block::Tool {
                            id,
                            name,
                            json,
                            streamed: false,
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, block);
            }
            "content_block_delta" => {
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = value.get("delta").unwrap_or(&Value::Null);
                match (
                    delta.get("type").and_then(Value::as_str),
                    self.blocks.get_mut(&index),
                ) {
                    (Some("text_delta"), Some(Block::Text(text))) => {
                        let piece = str_field(delta, "text");
                        text.push_str(&piece);
                        if !piece.is_empty() {
                            on_event(StreamEvent::TextDelta { text: piece });
                        }
                    }
                    (Some("input_json_delta"), Some(Block::Tool { json, streamed, .. })) => {
                        if let Some(piece) = delta.get("partial_json").and_then(Value::as_str) {
                            if !piece.is_empty() && !*streamed {
                                // The deltas carry the whole input.
                                json.clear();
                                *streamed = true;
                            }
                            json.push_str(piece);
                        }
                    }
                    (Some("text_delta" | "input_json_delta"), _) => {
                        return Err(Failure::malformed(format!(
                            "a delta arrived for content block {index}, which was never started"
                        )));
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(stop) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(stop.to_string());
                }
                if let Some(usage) = value.get("usage") {
                    self.read_usage(usage);
                }
            }
            "message_stop" => self.done = true,
            "error" => return Err(stream_error(&value)),
            // content_block_stop, ping and event types this client does not know.
            _ => {}
        }
        Ok(())
    }
}

/// An `error` event (or error body) arriving where a reply was expected.
fn stream_error(value: &Value) -> Failure {
    let kind = value
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    let detail = format!("{kind} mid-stream: {}", one_line(message, 200));
    match kind {
        "invalid_request_error" => Failure::Fatal(LlmError::BadRequest {
            provider: ProviderKind::Anthropic,
            status: 400,
            detail,
        }),
        "authentication_error" => Failure::Fatal(LlmError::Auth {
            provider: ProviderKind::Anthropic,
        }),
        "rate_limit_error" => Failure::retry(TransientKind::RateLimited, detail),
        _ => Failure::retry(TransientKind::Server, detail),
    }
}

impl StreamState for AnthropicStream {
    fn new() -> Self {
        AnthropicStream {
            sse: SseDecoder::new(),
            blocks: BTreeMap::new(),
            usage: Usage::default(),
            stop: None,
            started: false,
            done: false,
        }
    }

    fn feed(&mut self, bytes: &[u8], on_event: OnEvent<'_>) -> Result<bool, Failure> {
        self.sse.push(bytes);
        while let Some(event) = self.sse.next_event() {
            self.event(&event.event, &event.data, &mut *on_event)?;
            if self.done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn finish(self) -> Result<ModelResponse, Failure> {
        if !self.done {
            return Err(Failure::cut(if self.started {
                "the stream ended before message_stop"
            } else {
                "the stream ended before message_start"
            }));
        }
        let mut content = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                Block::Text(text) => {
                    if !text.is_empty() {
                        content.push(ContentBlock::Text { text });
                    }
                }
                Block::Tool { id, name, json, .. } => content.push(ContentBlock::ToolUse {
                    id,
                    name,
                    input: parse_tool_input(&json),
                }),
                Block::Other => {}
            }
        }
        let stop_reason = match self.stop.as_deref() {
            Some("end_turn") | Some("stop_sequence") | None => StopReason::EndTurn,
            Some("tool_use") => StopReason::ToolUse,
            Some("max_tokens") => StopReason::MaxTokens,
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
