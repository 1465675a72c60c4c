//! OpenAI Chat Completions (and compatible servers): `POST {base}/chat/completions`
//! with the base ending in `/v1`; SSE chunks whose `delta` carries text and `tool_calls`
//! fragments keyed by `index`; usage in the last chunk (`stream_options.include_usage`);
//! `data: [DONE]` at the end.
//!
//! Compatible servers are stricter or looser than OpenAI in places (docs/interop.md):
//! an assistant message that only calls tools carries `content: ""` (llama.cpp's server
//! rejects `null` and a missing key with HTTP 500), and `tool_choice` is always sent with
//! tools (it treats a missing one as "none").

use std::borrow::Cow;
use std::collections::BTreeMap;

use reqwest::RequestBuilder;
use serde::Serialize;
use serde_json::{json, Value};

use crate::calls::{into_blocks, new_call_id, RawCall};
use crate::sse::SseDecoder;
use crate::transport::{
    forced_function, generic_error_info, one_line, ErrorInfo, Failure, OnEvent, StreamState,
    TransientKind, Wire,
};
use crate::{
    ContentBlock, Message, ModelRequest, ModelResponse, ProviderConfig, ProviderKind, Role,
    StopReason, StreamEvent, ToolChoice, Usage,
};

pub(crate) struct OpenAi;

impl Wire for OpenAi {
    const KIND: ProviderKind = ProviderKind::OpenAi;
    const PATH: &'static str = "/chat/completions";
    type State = OpenAiStream;

    fn headers(rb: RequestBuilder, config: &ProviderConfig) -> RequestBuilder {
        crate::transport::bearer_auth(rb, config)
    }

    fn body(
        request: &ModelRequest,
        model: &str,
        max_tokens: u32,
        config: &ProviderConfig,
        stream: bool,
    ) -> serde_json::Result<Vec<u8>> {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if !request.system.is_empty() {
            messages.push(Msg::System {
                content: &request.system,
            });
        }
        for msg in &request.messages {
            push_message(&mut messages, msg);
        }
        // OpenAI's own API has replaced `max_tokens` (refused by its reasoning models);
        // compatible servers (vLLM, llama.cpp, LM Studio...) know `max_tokens`.
        let official = config.base_url.contains("://api.openai.com");
        serde_json::to_vec(&Body {
            model,
            messages,
            tools: request
                .tools
                .iter()
                .map(|t| Tool {
                    kind: "function",
                    function: ToolFunction {
                        name: &t.name,
                        description: &t.description,
                        parameters: &t.input_schema,
                    },
                })
                .collect(),
            tool_choice: (!request.tools.is_empty()).then(|| {
                match (forced_function(request, config), &config.tool_choice) {
                    (Some(name), _) => json!({"type": "function", "function": {"name": name}}),
                    (None, ToolChoice::Required) => json!("required"),
                    (None, _) => json!("auto"),
                }
            }),
            max_tokens: (!official).then_some(max_tokens),
            max_completion_tokens: official.then_some(max_tokens),
            temperature: config.temperature,
            seed: config.seed,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        })
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
        state.finish(on_event)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Msg<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    /// Sent whenever tools are: `"auto"` unless the config asks otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    stream: bool,
    /// Only with `stream: true` (OpenAI refuses it otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolFunction<'a>,
}

#[derive(Serialize)]
struct ToolFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum Msg<'a> {
    System {
        content: &'a str,
    },
    User {
        content: Cow<'a, str>,
    },
    /// `content` is `""` (never `null` or absent) when the assistant only called tools:
    /// llama.cpp's server answers HTTP 500 to both.
    Assistant {
        content: Cow<'a, str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: Cow<'a, str>,
    },
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    /// JSON text, as the API wants it.
    arguments: String,
}

/// Joins the text blocks of a message; borrowed when there is only one.
fn joined_text(msg: &Message) -> Cow<'_, str> {
    let mut texts = msg.content.iter().filter_map(|b| match b {
        ContentBlock::Text { text } if !text.is_empty() => Some(text.as_str()),
        _ => None,
    });
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    match texts.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut out = format!("{first}\n\n{second}");
            for t in texts {
                out.push_str("\n\n");
                out.push_str(t);
            }
            Cow::Owned(out)
        }
    }
}

/// A tool result's content; the API has no error flag, so failures say it in the text.
pub(crate) fn result_text(content: &str, is_error: bool) -> Cow<'_, str> {
    if is_error && !content.starts_with("Error") {
        Cow::Owned(format!("Error: {content}"))
    } else {
        Cow::Borrowed(content)
    }
}

/// Appends one protocol message: tool results become `tool` messages (first, right
/// after the assistant's `tool_calls`), text becomes a `user` / `assistant` message.
fn push_message<'a>(out: &mut Vec<Msg<'a>>, msg: &'a Message) {
    match msg.role {
        Role::User => {
            for block in &msg.content {
                if let ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } = block
                {
                    out.push(Msg::Tool {
                        tool_call_id: tool_use_id,
                        content: result_text(content, *is_error),
                    });
                }
            }
            let text = joined_text(msg);
            if !text.is_empty() {
                out.push(Msg::User { content: text });
            }
        }
        Role::Assistant => {
            let text = joined_text(msg);
            let tool_calls: Vec<WireCall> = msg
                .tool_uses()
                .map(|(id, name, input)| WireCall {
                    id,
                    kind: "function",
                    function: WireFunction {
                        name,
                        // Invalid arguments go back as the model wrote them.
                        arguments: input.arguments_text().into_owned(),
                    },
                })
                .collect();
            if text.is_empty() && tool_calls.is_empty() {
                return;
            }
            out.push(Msg::Assistant {
                content: text,
                tool_calls,
            });
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
    progress: u64,
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
                call.id = new_call_id();
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
        self.progress += 1;
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
            progress: 0,
        }
    }

    fn progress(&self) -> u64 {
        self.progress
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

    fn finish(self, on_event: OnEvent<'_>) -> Result<ModelResponse, Failure> {
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
        let calls = self
            .calls
            .into_values()
            .map(|c| RawCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        content.extend(into_blocks(calls, on_event));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: &str, finish: &str) -> String {
        format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}],\"usage\":null}}\n\n")
    }

    fn stream() -> String {
        let mut s = String::new();
        s.push_str(&chunk(r#"{"role":"assistant","content":""}"#, "null"));
        s.push_str(": keep-alive\n\n");
        s.push_str(&chunk(r#"{"content":"Hé"}"#, "null"));
        s.push_str(&chunk(r#"{"content":"😀"}"#, "null"));
        s.push_str(&chunk(
            r#"{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"read_file","arguments":""}}]}"#,
            "null",
        ));
        s.push_str(&chunk(
            r#"{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"bash","arguments":"{\"comm"}}]}"#,
            "null",
        ));
        s.push_str(&chunk(
            r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"path\":\"a\"}"}}]}"#,
            "null",
        ));
        s.push_str(&chunk(
            r#"{"tool_calls":[{"index":1,"function":{"arguments":"and\":\"ls\"}"}}]}"#,
            "null",
        ));
        s.push_str(&chunk("{}", "\"tool_calls\""));
        s.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":22,\"total_tokens\":33}}\n\n");
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn decode(pieces: &[&[u8]]) -> (Result<ModelResponse, Failure>, Vec<StreamEvent>) {
        crate::transport::decode_pieces::<OpenAiStream>(pieces)
    }

    fn check(result: Result<ModelResponse, Failure>) {
        let response = result.expect("complete");
        assert_eq!(response.message.text(), "Hé😀");
        let calls: Vec<_> = response.message.tool_uses().collect();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].0, calls[0].1), ("call_a", "read_file"));
        assert_eq!(calls[0].2.as_json(), Some(&json!({"path": "a"})));
        assert_eq!((calls[1].0, calls[1].1), ("call_b", "bash"));
        assert_eq!(calls[1].2.as_json(), Some(&json!({"command": "ls"})));
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        assert_eq!(response.usage.input_tokens, 11);
        assert_eq!(response.usage.output_tokens, 22);
    }

    #[test]
    fn assembles_fragments_by_index_across_any_split() {
        for s in [stream(), stream().replace('\n', "\r\n")] {
            let bytes = s.as_bytes();
            for cut in (0..bytes.len()).step_by(5) {
                check(decode(&[&bytes[..cut], &bytes[cut..]]).0);
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            let (result, events) = decode(&singles);
            check(result);
            let started: Vec<_> = events
                .iter()
                .filter(|e| matches!(e, StreamEvent::ToolCallStarted { .. }))
                .collect();
            assert_eq!(started.len(), 2);
        }
    }

    #[test]
    fn no_done_means_cut() {
        let s = stream();
        let end = s.find("data: [DONE]").expect("done");
        let (result, _) = decode(&[&s.as_bytes()[..end]]);
        assert!(matches!(
            result,
            Err(Failure::Retry(t)) if t.kind == TransientKind::StreamCut
        ));
    }

    #[test]
    fn fragments_without_index_are_kept_apart_by_id() {
        let mut s = String::new();
        s.push_str(&chunk(
            r#"{"tool_calls":[{"id":"x1","function":{"name":"a","arguments":"{}"}}]}"#,
            "null",
        ));
        s.push_str(&chunk(
            r#"{"tool_calls":[{"id":"x2","function":{"name":"b","arguments":"{\"k\":"}}]}"#,
            "null",
        ));
        s.push_str(&chunk(
            r#"{"tool_calls":[{"function":{"arguments":"1}"}}]}"#,
            "\"stop\"",
        ));
        s.push_str("data: [DONE]\n\n");
        let response = decode(&[s.as_bytes()]).0.expect("complete");
        let calls: Vec<_> = response.message.tool_uses().collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].2.as_json(), Some(&json!({"k": 1})));
        assert_eq!(response.stop_reason, StopReason::ToolUse);
    }

    #[test]
    fn official_api_gets_max_completion_tokens() {
        let request = ModelRequest {
            model: "m".into(),
            system: String::new(),
            messages: vec![Message::user_text("hi")],
            tools: vec![],
            max_tokens: 0,
        };
        let mut config = ProviderConfig::new(ProviderKind::OpenAi);
        let encode = |config: &ProviderConfig| -> Value {
            serde_json::from_slice(&OpenAi::body(&request, "m", 10, config, true).expect("body"))
                .expect("JSON")
        };
        let body = encode(&config);
        assert_eq!(body["max_completion_tokens"], 10);
        assert!(body.get("max_tokens").is_none());
        config.base_url = "http://localhost:8000/v1".into();
        let body = encode(&config);
        assert_eq!(body["max_tokens"], 10);
        assert_eq!(body["messages"][0]["role"], "user");
    }
}
