//! Ollama: `POST {host}/api/chat`, NDJSON lines with `message.content` and
//! `message.tool_calls` (arguments as an object, no ids: they are generated here), a
//! final `done: true` line with `prompt_eval_count` / `eval_count`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use reqwest::RequestBuilder;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::calls::{into_blocks, new_call_id, RawCall};
use crate::ndjson::NdjsonDecoder;
use crate::openai::result_text;
use crate::transport::{
    generic_error_info, one_line, ErrorInfo, Failure, OnEvent, StreamState, TransientKind, Wire,
};
use crate::{
    ContentBlock, ModelRequest, ModelResponse, ProviderConfig, ProviderKind, Role, StopReason,
    StreamEvent, Usage,
};

pub(crate) struct Ollama;

impl Wire for Ollama {
    const KIND: ProviderKind = ProviderKind::Ollama;
    const PATH: &'static str = "/api/chat";
    type State = OllamaStream;

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
                content: Cow::Borrowed(&request.system),
            });
        }
        // Tool results name their tool (`tool_name`); find it from the call's id.
        let mut names: HashMap<&str, &str> = HashMap::new();
        for msg in &request.messages {
            match msg.role {
                Role::User => {
                    let mut text = String::new();
                    for block in &msg.content {
                        match block {
                            ContentBlock::ToolResult {
                                tool_use_id,
                                content,
                                is_error,
                            } => messages.push(Msg::Tool {
                                content: result_text(content, *is_error),
                                tool_name: names.get(tool_use_id.as_str()).copied(),
                            }),
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
                        messages.push(Msg::User {
                            content: Cow::Owned(text),
                        });
                    }
                }
                Role::Assistant => {
                    let tool_calls: Vec<WireCall> = msg
                        .tool_uses()
                        .map(|(id, name, input)| {
                            names.insert(id, name);
                            WireCall {
                                function: WireFunction {
                                    name,
                                    // Ollama wants an object: invalid arguments
                                    // go back as `{}`, the error result quotes them.
                                    arguments: match input.as_json() {
                                        Some(v) if v.is_object() => v,
                                        _ => &EMPTY_INPUT,
                                    },
                                },
                            }
                        })
                        .collect();
                    let text = msg.text();
                    if text.is_empty() && tool_calls.is_empty() {
                        continue;
                    }
                    messages.push(Msg::Assistant {
                        content: Cow::Owned(text),
                        tool_calls,
                    });
                }
            }
        }
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
            stream,
            options: Options {
                num_predict: max_tokens,
                temperature: config.temperature,
                seed: config.seed,
            },
        })
    }

    fn error_info(body: &str) -> ErrorInfo {
        generic_error_info(body)
    }

    fn parse_full(body: &[u8], on_event: OnEvent<'_>) -> Result<ModelResponse, Failure> {
        let mut state = OllamaStream::new();
        state.feed(body, &mut *on_event)?;
        state.finish(on_event)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Msg<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    stream: bool,
    options: Options,
}

#[derive(Serialize)]
struct Options {
    num_predict: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
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
        content: Cow<'a, str>,
    },
    User {
        content: Cow<'a, str>,
    },
    Assistant {
        content: Cow<'a, str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireCall<'a>>,
    },
    Tool {
        content: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_name: Option<&'a str>,
    },
}

#[derive(Serialize)]
struct WireCall<'a> {
    function: WireFunction<'a>,
}

/// Ollama takes arguments as an object.
#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a Value,
}

static EMPTY_INPUT: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

pub(crate) struct OllamaStream {
    lines: NdjsonDecoder,
    text: String,
    calls: Vec<RawCall>,
    usage: Usage,
    done_reason: Option<String>,
    started: bool,
    done: bool,
    progress: u64,
}

impl OllamaStream {
    fn line(&mut self, line: &str, on_event: OnEvent<'_>) -> Result<(), Failure> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            Failure::malformed(format!(
                "a line is not valid JSON ({e}): {}",
                one_line(line, 120)
            ))
        })?;
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            let message = err.as_str().map(str::to_string).unwrap_or(err.to_string());
            return Err(Failure::retry(
                TransientKind::Server,
                format!("error mid-stream: {}", one_line(&message, 200)),
            ));
        }
        self.started = true;
        self.progress += 1;
        if let Some(message) = value.get("message") {
            if let Some(piece) = message.get("content").and_then(Value::as_str) {
                if !piece.is_empty() {
                    self.text.push_str(piece);
                    on_event(StreamEvent::TextDelta {
                        text: piece.to_string(),
                    });
                }
            }
            if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let name = function
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let arguments = match function.get("arguments") {
                        Some(Value::String(raw)) => raw.clone(),
                        None | Some(Value::Null) => String::new(),
                        Some(other) => other.to_string(),
                    };
                    // Recent servers may send an id; otherwise one is made up.
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .unwrap_or_else(new_call_id);
                    on_event(StreamEvent::ToolCallStarted {
                        id: id.clone(),
                        name: name.clone(),
                    });
                    self.calls.push(RawCall {
                        id,
                        name,
                        arguments,
                    });
                }
            }
        }
        if value.get("done").and_then(Value::as_bool) == Some(true) {
            let n = |k: &str| value.get(k).and_then(Value::as_u64);
            if let Some(input) = n("prompt_eval_count") {
                self.usage.input_tokens = input;
            }
            if let Some(output) = n("eval_count") {
                self.usage.output_tokens = output;
            }
            self.done_reason = value
                .get("done_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            self.done = true;
        }
        Ok(())
    }
}

impl StreamState for OllamaStream {
    fn new() -> Self {
        OllamaStream {
            lines: NdjsonDecoder::new(),
            text: String::new(),
            calls: Vec::new(),
            usage: Usage::default(),
            done_reason: None,
            started: false,
            done: false,
            progress: 0,
        }
    }

    fn progress(&self) -> u64 {
        self.progress
    }

    fn feed(&mut self, bytes: &[u8], on_event: OnEvent<'_>) -> Result<bool, Failure> {
        self.lines.push(bytes);
        while let Some(line) = self.lines.next_line() {
            self.line(&line, &mut *on_event)?;
            if self.done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn finish(mut self, on_event: OnEvent<'_>) -> Result<ModelResponse, Failure> {
        if !self.done {
            // A last line without its newline still counts if it is complete.
            if let Some(tail) = self.lines.finish() {
                if serde_json::from_str::<Value>(&tail).is_ok() {
                    let mut ignore = |_: StreamEvent| {};
                    self.line(&tail, &mut ignore)?;
                }
            }
        }
        if !self.done {
            return Err(Failure::cut(if self.started {
                "the stream ended before done: true"
            } else {
                "the stream ended before its first line"
            }));
        }
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(ContentBlock::Text { text: self.text });
        }
        let has_calls = !self.calls.is_empty();
        content.extend(into_blocks(self.calls, on_event));
        let stop_reason = match self.done_reason.as_deref() {
            Some("length") => StopReason::MaxTokens,
            _ if has_calls => StopReason::ToolUse,
            Some("stop") | None => StopReason::EndTurn,
            Some(other) => StopReason::Other(other.to_string()),
        };
        Ok(ModelResponse {
            message: crate::Message {
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
    use serde_json::json;

    const STREAM: &str = concat!(
        "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Hé\"},\"done\":false}\n",
        "\n",
        "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"😀\",\"thinking\":\"x\"},\"done\":false}\n",
        "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"bash\",\"arguments\":{\"command\":\"ls\"}}},{\"function\":{\"name\":\"read_file\",\"arguments\":\"{\\\"path\\\":\"}}]},\"done\":false}\n",
        "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"prompt_eval_count\":26,\"eval_count\":298}\n",
    );

    fn decode(pieces: &[&[u8]]) -> Result<ModelResponse, Failure> {
        crate::transport::decode_pieces::<OllamaStream>(pieces).0
    }

    #[test]
    fn assembles_across_any_split_and_generates_ids() {
        for s in [STREAM.to_string(), STREAM.replace('\n', "\r\n")] {
            let bytes = s.as_bytes();
            for cut in 0..bytes.len() {
                let response = decode(&[&bytes[..cut], &bytes[cut..]]).expect("complete");
                assert_eq!(response.message.text(), "Hé😀");
                let calls: Vec<_> = response.message.tool_uses().collect();
                assert_eq!(calls.len(), 2);
                assert!(calls[0].0.starts_with("call_"));
                assert_ne!(calls[0].0, calls[1].0);
                assert_eq!(calls[0].2.as_json(), Some(&json!({"command": "ls"})));
                assert_eq!(calls[1].2.invalid().map(|(raw, _)| raw), Some("{\"path\":"));
                assert_eq!(response.stop_reason, StopReason::ToolUse);
                assert_eq!(response.usage.input_tokens, 26);
                assert_eq!(response.usage.output_tokens, 298);
            }
        }
    }

    #[test]
    fn no_done_line_means_cut_and_a_last_line_without_newline_counts() {
        let end = STREAM.rfind("{\"model\"").expect("last line");
        assert!(matches!(
            decode(&[&STREAM.as_bytes()[..end]]),
            Err(Failure::Retry(t)) if t.kind == TransientKind::StreamCut
        ));
        let trimmed = STREAM.trim_end();
        assert!(decode(&[trimmed.as_bytes()]).is_ok());
    }

    #[test]
    fn an_error_line_is_retried() {
        let s = "{\"error\":\"an error was encountered while running the model\"}\n";
        assert!(matches!(
            decode(&[s.as_bytes()]),
            Err(Failure::Retry(t)) if t.kind == TransientKind::Server
        ));
    }
}
