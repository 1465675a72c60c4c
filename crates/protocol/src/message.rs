use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message. Tool results travel in `User` messages, as in the Anthropic API;
/// each provider maps them to its own wire shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

/// One piece of a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    /// A tool call made by the model: its input is a JSON object, or the text the model
    /// sent when that was not one (see [`ToolInput`]).
    ToolUse {
        id: String,
        name: String,
        input: ToolInput,
    },
    /// The result of running a tool call, sent back to the model.
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentBlock>,
}

impl Message {
    pub fn user_text(text: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: vec![ContentBlock::Text { text: text.into() }],
        }
    }

    pub fn assistant_text(text: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: vec![ContentBlock::Text { text: text.into() }],
        }
    }

    /// All text blocks joined, without tool calls or results.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for block in &self.content {
            if let ContentBlock::Text { text } = block {
                out.push_str(text);
            }
        }
        out
    }

    /// Whether this is only the results of tool calls (a `User` message the user did
    /// not write). `/stats` and a resumed session's count leave these out.
    pub fn is_tool_results(&self) -> bool {
        self.role == Role::User
            && !self.content.is_empty()
            && self
                .content
                .iter()
                .all(|b| matches!(b, ContentBlock::ToolResult { .. }))
    }

    /// The results in this message: `(tool_use_id, is_error)`.
    pub fn tool_results(&self) -> impl Iterator<Item = (&str, bool)> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolResult {
                tool_use_id,
                is_error,
                ..
            } => Some((tool_use_id.as_str(), *is_error)),
            _ => None,
        })
    }

    /// The tool calls in this message, in order: `(id, name, input)`.
    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &ToolInput)> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }
}

/// The input of a tool call: the parsed JSON object, or, when the model's arguments
/// were not a JSON object, the text it sent and why it was refused. The core answers an
/// `Invalid` call with an error result so the model can correct itself; each wire sends
/// the call back as faithfully as its API allows.
///
/// Serialised (in stored sessions) as the plain object for `Json`, and as
/// `{"__invalid_json": raw, "__invalid_json_error": error}` for `Invalid`; the older
/// form without the error is still read.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolInput {
    Json(Value),
    Invalid { raw: String, error: String },
}

const INVALID_RAW_KEY: &str = "__invalid_json";
const INVALID_ERROR_KEY: &str = "__invalid_json_error";

impl ToolInput {
    /// Parses streamed tool-call arguments: a JSON object, `{}` for empty arguments,
    /// `Invalid` otherwise.
    pub fn parse(raw: &str) -> ToolInput {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return ToolInput::Json(Value::Object(Default::default()));
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(map)) => ToolInput::Json(Value::Object(map)),
            Ok(other) => ToolInput::Invalid {
                raw: raw.to_string(),
                error: format!("expected a JSON object, got {}", json_kind(&other)),
            },
            Err(e) => ToolInput::Invalid {
                raw: raw.to_string(),
                error: e.to_string(),
            },
        }
    }

    /// The parsed object, or `None` for invalid arguments.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            ToolInput::Json(v) => Some(v),
            ToolInput::Invalid { .. } => None,
        }
    }

    /// `(raw, error)` for invalid arguments.
    pub fn invalid(&self) -> Option<(&str, &str)> {
        match self {
            ToolInput::Json(_) => None,
            ToolInput::Invalid { raw, error } => Some((raw, error)),
        }
    }

    /// The input as a JSON value for display and events: the object, or the raw text as
    /// a JSON string.
    pub fn to_value(&self) -> Value {
        match self {
            ToolInput::Json(v) => v.clone(),
            ToolInput::Invalid { raw, .. } => Value::String(raw.clone()),
        }
    }

    /// The arguments as the text a model wrote them: the compact JSON of the object, or
    /// the raw text.
    pub fn arguments_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            ToolInput::Json(v) => std::borrow::Cow::Owned(v.to_string()),
            ToolInput::Invalid { raw, .. } => std::borrow::Cow::Borrowed(raw),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl From<Value> for ToolInput {
    fn from(v: Value) -> Self {
        ToolInput::Json(v)
    }
}

/// `Json(v) == v`; an `Invalid` input equals no value.
impl PartialEq<Value> for ToolInput {
    fn eq(&self, other: &Value) -> bool {
        self.as_json() == Some(other)
    }
}

impl PartialEq<ToolInput> for Value {
    fn eq(&self, other: &ToolInput) -> bool {
        other == self
    }
}

/// The arguments as text (see [`ToolInput::arguments_text`]).
impl std::fmt::Display for ToolInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.arguments_text())
    }
}

impl Serialize for ToolInput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolInput::Json(v) => v.serialize(s),
            ToolInput::Invalid { raw, error } => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry(INVALID_RAW_KEY, raw)?;
                map.serialize_entry(INVALID_ERROR_KEY, error)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ToolInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        if let Some(Value::String(raw)) = value.get(INVALID_RAW_KEY) {
            let error = value
                .get(INVALID_ERROR_KEY)
                .and_then(Value::as_str)
                .unwrap_or("not a JSON object")
                .to_string();
            return Ok(ToolInput::Invalid {
                raw: raw.clone(),
                error,
            });
        }
        Ok(ToolInput::Json(value))
    }
}

/// A tool offered to the model: name, description and JSON Schema of its input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// Token counts as the API reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model finished its turn.
    EndTurn,
    /// The model wants tool results.
    ToolUse,
    /// The output hit `max_tokens`.
    MaxTokens,
    /// Anything else the API said, verbatim.
    Other(String),
}

/// What the core asks a provider for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    pub model: String,
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
}

/// A complete model reply, assembled from the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// Always `Role::Assistant`.
    pub message: Message,
    pub usage: Usage,
    pub stop_reason: StopReason,
}

/// What a provider reports while a reply streams in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A piece of assistant text.
    TextDelta { text: String },
    /// A tool call has begun to stream (its arguments follow, then it is complete in
    /// the final [`ModelResponse`]).
    ToolCallStarted { id: String, name: String },
    /// The request failed in a way that is retried; everything streamed since the last
    /// request began must be discarded by the consumer.
    Retrying {
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    /// Something the user should know about the reply that does not fail it (e.g. the
    /// server sent several tool calls with one id and the client repaired the history).
    /// The core shows it as a notice.
    Warning { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_input_parsing() {
        assert_eq!(ToolInput::parse(""), ToolInput::Json(json!({})));
        assert_eq!(ToolInput::parse("  "), ToolInput::Json(json!({})));
        assert_eq!(
            ToolInput::parse("{\"a\":1}"),
            ToolInput::Json(json!({"a": 1}))
        );
        let bad = ToolInput::parse("{\"a\":");
        let (raw, error) = bad.invalid().expect("invalid");
        assert_eq!(raw, "{\"a\":");
        assert!(error.contains("EOF"), "{error}");
        let (raw, error) = ToolInput::parse("[1]")
            .invalid()
            .map(|(r, e)| (r.to_string(), e.to_string()))
            .expect("invalid");
        assert_eq!(raw, "[1]");
        assert_eq!(error, "expected a JSON object, got an array");
        assert_eq!(ToolInput::parse("[1]").to_string(), "[1]");
    }

    #[test]
    fn tool_input_round_trips_and_reads_the_old_form() {
        for input in [
            ToolInput::Json(json!({"path": "a"})),
            ToolInput::parse("{\"path\": "),
        ] {
            let block = ContentBlock::ToolUse {
                id: "t".into(),
                name: "read_file".into(),
                input: input.clone(),
            };
            let text = serde_json::to_string(&block).expect("encode");
            let back: ContentBlock = serde_json::from_str(&text).expect("decode");
            assert_eq!(back, block);
        }
        let old: ToolInput =
            serde_json::from_value(json!({"__invalid_json": "{\"a\""})).expect("decode");
        assert_eq!(old.invalid().map(|(raw, _)| raw), Some("{\"a\""));
    }
}
