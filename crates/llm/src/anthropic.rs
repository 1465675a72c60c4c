//! Anthropic Messages: `POST {base}/v1/messages`, SSE events `message_start`,
//! `content_block_start/delta/stop` (`text_delta`, `input_json_delta`),
//! `message_delta`, `message_stop`, `ping`, `error`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use reqwest::RequestBuilder;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::calls::{into_blocks, RawCall};
use crate::sse::SseDecoder;
use crate::transport::{
    forced_function, generic_error_info, one_line, ErrorInfo, Failure, OnEvent, StreamState,
    TransientKind, Wire,
};
use crate::{
    ContentBlock, LlmError, Message, ModelRequest, ModelResponse, ProviderConfig, ProviderKind,
    Role, StopReason, StreamEvent, ToolChoice, Usage,
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

    fn body(
        request: &ModelRequest,
        model: &str,
        max_tokens: u32,
        config: &ProviderConfig,
        stream: bool,
    ) -> serde_json::Result<Vec<u8>> {
        let mut messages: Vec<Msg> = request.messages.iter().filter_map(message).collect();
        let cache = config.prompt_cache_enabled();
        // A second cache breakpoint on the newest block caches the conversation so far.
        if let Some(last) = messages
            .last_mut()
            .and_then(|m| m.content.last_mut())
            .filter(|_| cache)
        {
            last.set_cache_control();
        }
        // Sent explicitly: a proxy in front of an OpenAI-compatible server (LiteLLM)
        // would otherwise send none, which some servers take as "none".
        let tool_choice = (!request.tools.is_empty()).then(|| {
            match (forced_function(request, config), &config.tool_choice) {
                (Some(name), _) => json!({"type": "tool", "name": name}),
                (None, ToolChoice::Required) => json!({"type": "any"}),
                (None, _) => json!({"type": "auto"}),
            }
        });
        serde_json::to_vec(&Body {
            model,
            max_tokens,
            stream,
            // A cache breakpoint on the system prompt: it (and the tools before it) is
            // the same on every turn. Without caching, the plain string: a proxy to an
            // OpenAI-compatible server (LiteLLM) turns blocks into content parts, which
            // llama.cpp's server refuses for a system message (HTTP 500).
            system: (!request.system.is_empty()).then(|| {
                if cache {
                    System::Blocks([SystemBlock {
                        kind: "text",
                        text: &request.system,
                        cache_control: EPHEMERAL,
                    }])
                } else {
                    System::Text(&request.system)
                }
            }),
            tools: request
                .tools
                .iter()
                .map(|t| Tool {
                    name: &t.name,
                    description: &t.description,
                    input_schema: &t.input_schema,
                })
                .collect(),
            tool_choice,
            temperature: config.temperature,
            messages,
        })
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
        state.finish(on_event)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    /// Anthropic has no seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    messages: Vec<Msg<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum System<'a> {
    Text(&'a str),
    Blocks([SystemBlock<'a>; 1]),
}

#[derive(Serialize)]
struct SystemBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    cache_control: CacheControl,
}

#[derive(Clone, Copy, Serialize)]
struct CacheControl {
    #[serde(rename = "type")]
    kind: &'static str,
}

const EPHEMERAL: CacheControl = CacheControl { kind: "ephemeral" };

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'static str,
    content: Vec<WireBlock<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
}

impl WireBlock<'_> {
    fn set_cache_control(&mut self) {
        match self {
            WireBlock::Text { cache_control, .. }
            | WireBlock::ToolUse { cache_control, .. }
            | WireBlock::ToolResult { cache_control, .. } => *cache_control = Some(EPHEMERAL),
        }
    }
}

/// The input sent for a call whose arguments were not a JSON object: the API accepts
/// only an object, so the model's text cannot go back as it was; the core's error
/// result for the call quotes it with the parse error.
static EMPTY_INPUT: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

/// One protocol message as an Anthropic message, or `None` if nothing of it can be
/// sent (the API refuses empty content).
fn message(msg: &Message) -> Option<Msg<'_>> {
    let mut content = Vec::with_capacity(msg.content.len());
    // Tool results must come first in their message.
    for block in &msg.content {
        if let ContentBlock::ToolResult {
            tool_use_id,
            content: text,
            is_error,
        } = block
        {
            content.push(WireBlock::ToolResult {
                tool_use_id,
                content: text,
                is_error: *is_error,
                cache_control: None,
            });
        }
    }
    for block in &msg.content {
        match block {
            ContentBlock::Text { text } if !text.is_empty() => content.push(WireBlock::Text {
                text,
                cache_control: None,
            }),
            ContentBlock::ToolUse { id, name, input } => content.push(WireBlock::ToolUse {
                id,
                name,
                input: match input.as_json() {
                    Some(v) if v.is_object() => v,
                    _ => &EMPTY_INPUT,
                },
                cache_control: None,
            }),
            _ => {}
        }
    }
    if content.is_empty() {
        return None;
    }
    let role = match msg.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    Some(Msg { role, content })
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
    progress: u64,
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
        if kind != "ping" {
            self.progress += 1;
        }
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
            progress: 0,
        }
    }

    fn progress(&self) -> u64 {
        self.progress
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

    fn finish(self, on_event: OnEvent<'_>) -> Result<ModelResponse, Failure> {
        if !self.done {
            return Err(Failure::cut(if self.started {
                "the stream ended before message_stop"
            } else {
                "the stream ended before message_start"
            }));
        }
        // Text first, then the calls (the order the other wires produce; the API
        // accepts text and tool_use blocks in any order).
        let mut content = Vec::new();
        let mut calls = Vec::new();
        for block in self.blocks.into_values() {
            match block {
                Block::Text(text) => {
                    if !text.is_empty() {
                        content.push(ContentBlock::Text { text });
                    }
                }
                Block::Tool { id, name, json, .. } => calls.push(RawCall {
                    id,
                    name,
                    arguments: json,
                }),
                Block::Other => {}
            }
        }
        content.extend(into_blocks(calls, on_event));
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

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"m\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé😀\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"llo\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"bash\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\": \\\"l\"}}\n\n",
        "event: future_event\ndata: {\"type\":\"future_event\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"s\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn decode(pieces: &[&[u8]]) -> (Result<ModelResponse, Failure>, Vec<StreamEvent>) {
        crate::transport::decode_pieces::<AnthropicStream>(pieces)
    }

    fn check(result: Result<ModelResponse, Failure>) {
        let response = result.expect("complete");
        assert_eq!(response.message.text(), "Hé😀llo");
        let calls: Vec<_> = response.message.tool_uses().collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "toolu_1");
        assert_eq!(calls[0].2.as_json(), Some(&json!({"command": "ls"})));
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        assert_eq!(response.usage.input_tokens, 30);
        assert_eq!(response.usage.output_tokens, 42);
    }

    #[test]
    fn assembles_across_any_split_with_lf_or_crlf() {
        for stream in [STREAM.to_string(), STREAM.replace('\n', "\r\n")] {
            let bytes = stream.as_bytes();
            for cut in (0..bytes.len()).step_by(7) {
                let (result, _) = decode(&[&bytes[..cut], &bytes[cut..]]);
                check(result);
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            let (result, events) = decode(&singles);
            check(result);
            assert_eq!(
                events,
                vec![
                    StreamEvent::TextDelta {
                        text: "Hé😀".into()
                    },
                    StreamEvent::TextDelta { text: "llo".into() },
                    StreamEvent::ToolCallStarted {
                        id: "toolu_1".into(),
                        name: "bash".into()
                    },
                ]
            );
        }
    }

    #[test]
    fn a_stream_without_message_stop_is_cut() {
        let end = STREAM.find("event: message_stop").expect("stop");
        let (result, _) = decode(&[&STREAM.as_bytes()[..end]]);
        assert!(matches!(
            result,
            Err(Failure::Retry(t)) if t.kind == TransientKind::StreamCut
        ));
    }

    #[test]
    fn an_error_event_is_retried() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        let (result, _) = decode(&[stream.as_bytes()]);
        match result {
            Err(Failure::Retry(t)) => {
                assert_eq!(t.kind, TransientKind::Server);
                assert!(t.detail.contains("overloaded_error"), "{}", t.detail);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_body_shape() {
        let request = ModelRequest {
            model: "claude-x".into(),
            system: "sys".into(),
            messages: vec![
                Message::user_text("hi"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentBlock::Text {
                            text: String::new(),
                        },
                        ContentBlock::ToolUse {
                            id: "t1".into(),
                            name: "bash".into(),
                            input: json!({"command": "ls"}).into(),
                        },
                    ],
                },
                Message {
                    role: Role::User,
                    content: vec![
                        ContentBlock::Text {
                            text: "and also".into(),
                        },
                        ContentBlock::ToolResult {
                            tool_use_id: "t1".into(),
                            content: "out".into(),
                            is_error: true,
                        },
                    ],
                },
            ],
            tools: vec![],
            max_tokens: 0,
        };
        let config = ProviderConfig::new(ProviderKind::Anthropic);
        let body: Value = serde_json::from_slice(
            &Anthropic::body(&request, "claude-x", 77, &config, true).expect("body"),
        )
        .expect("JSON");
        assert_eq!(body["max_tokens"], 77);
        assert!(body.get("tools").is_none());
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        let msgs = body["messages"].as_array().expect("messages");
        // The empty text block is dropped; tool results come first.
        assert_eq!(msgs[1]["content"].as_array().map(Vec::len), Some(1));
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][0]["is_error"], true);
        assert_eq!(msgs[2]["content"][1]["text"], "and also");
        assert_eq!(msgs[2]["content"][1]["cache_control"]["type"], "ephemeral");
        // Elsewhere than api.anthropic.com, no caching unless asked.
        let mut other = config.clone();
        other.base_url = "http://127.0.0.1:4000".into();
        let body: Value = serde_json::from_slice(
            &Anthropic::body(&request, "claude-x", 77, &other, true).expect("body"),
        )
        .expect("JSON");
        assert_eq!(body["system"], "sys");
        assert!(!body.to_string().contains("cache_control"));
        other.prompt_cache = Some(true);
        let body: Value = serde_json::from_slice(
            &Anthropic::body(&request, "claude-x", 77, &other, true).expect("body"),
        )
        .expect("JSON");
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
    }
}
