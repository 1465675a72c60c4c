//! Model providers (Anthropic, OpenAI, Ollama): streaming decoders and retry.
//!
//! One [`ModelClient`] per configured provider, made by [`client`]. Every request
//! streams: text deltas and tool-call starts reach the caller's `on_event` as they
//! arrive, and the complete reply comes back as a [`ModelResponse`]. Layers, as in
//! codex-rs: byte-level decoders ([`sse`], [`ndjson`]), one wire module per API that maps
//! the shared protocol types to its request body and assembles its stream, and a shared
//! transport that owns the HTTP client, the retry loop and cancellation.
//!
//! Design decisions:
//! - Base URLs follow each ecosystem: Anthropic without `/v1`, OpenAI with `/v1`,
//!   Ollama's host. See [`ProviderKind::default_base_url`].
//! - Transient failures are retried inside [`ModelClient::stream`] (see [`RetryPolicy`]);
//!   before each retry a [`StreamEvent::Retrying`] tells the consumer to drop what was
//!   streamed. A stream that ends without its final event (`message_stop`, `[DONE]`,
//!   `done: true`) is a failure, never a complete answer.
//! - Tool-call arguments that are not a JSON object do not fail the reply: the call's
//!   input becomes `{"__invalid_json": "<raw text>"}` ([`INVALID_JSON_KEY`]), which the
//!   core turns into an error result so the model can correct itself.
//! - One `reqwest::Client` per model client, built on first use (connection pooling,
//!   rustls with the bundled web PKI roots, so no certificate store is read).

mod anthropic;
mod error;
pub mod ndjson;
mod ollama;
mod openai;
pub mod sse;
mod transport;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use error::LlmError;
pub use safe_coder_protocol::{
    ContentBlock, Message, ModelRequest, ModelResponse, Role, StopReason, StreamEvent, ToolSpec,
    Usage,
};
pub use tokio_util::sync::CancellationToken;

/// The key under which a tool call's arguments are kept when they are not a JSON object.
pub const INVALID_JSON_KEY: &str = "__invalid_json";

/// A model API. Serialised as `anthropic`, `openai`, `ollama` (`as_str`); with the
/// `clap` feature it is also a `clap::ValueEnum` (`--provider`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Chat Completions, or any compatible server (vLLM, llama.cpp, LM Studio,
    /// OpenRouter) through the base URL.
    #[cfg_attr(feature = "clap", value(name = "openai"))]
    OpenAi,
    /// A local Ollama server.
    Ollama,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Anthropic,
        ProviderKind::OpenAi,
        ProviderKind::Ollama,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Ollama => "ollama",
        }
    }

    /// The public endpoint, in the ecosystem's convention: Anthropic without `/v1`,
    /// OpenAI with `/v1`, Ollama's host.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Ollama => "http://localhost:11434",
        }
    }

    pub fn default_model(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "claude-sonnet-4-5",
            ProviderKind::OpenAi => "gpt-4.1",
            ProviderKind::Ollama => "qwen2.5-coder",
        }
    }

    /// The environment variable that conventionally holds the key. With
    /// [`ProviderKind::base_url_env`], the one table of provider variables.
    pub fn api_key_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::OpenAi => Some("OPENAI_API_KEY"),
            ProviderKind::Ollama => None,
        }
    }

    /// The environment variable that conventionally holds the base URL.
    pub fn base_url_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::Anthropic => Some("ANTHROPIC_BASE_URL"),
            ProviderKind::OpenAi => Some("OPENAI_BASE_URL"),
            ProviderKind::Ollama => Some("OLLAMA_HOST"),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a provider name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{0}`: use anthropic, openai or ollama")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "anthropic" => Ok(ProviderKind::Anthropic),
            "openai" => Ok(ProviderKind::OpenAi),
            "ollama" => Ok(ProviderKind::Ollama),
            _ => Err(UnknownProvider(s.to_string())),
        }
    }
}

/// How transient failures are retried: exponential backoff from `base_delay`, doubling
/// per attempt up to `max_delay`, with jitter (each delay is drawn from its upper half);
/// a `retry-after` header replaces the computed delay (up to [`MAX_RETRY_AFTER`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `max_retries + 1` attempts in all).
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

/// The longest `retry-after` that is waited out; a longer one ends the retries.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The delay before retry number `retry` (1-based), without a `retry-after`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_ms = fastrand::u64(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Everything needed to talk to one provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// In the ecosystem's convention (see [`ProviderKind::default_base_url`]); a
    /// trailing `/` is ignored.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub max_tokens: u32,
    pub retry: RetryPolicy,
}

impl ProviderConfig {
    /// The provider's defaults (base URL, model, 8192 output tokens, default retries).
    pub fn new(kind: ProviderKind) -> Self {
        ProviderConfig {
            kind,
            base_url: kind.default_base_url().to_string(),
            api_key: None,
            model: kind.default_model().to_string(),
            max_tokens: 8192,
            retry: RetryPolicy::default(),
        }
    }
}

/// Never prints the key.
impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("retry", &self.retry)
            .finish()
    }
}

/// A model API client.
#[async_trait]
pub trait ModelClient: Send + Sync {
    /// Streams one reply. `on_event` receives [`StreamEvent::TextDelta`],
    /// [`StreamEvent::ToolCallStarted`] and [`StreamEvent::Retrying`] as they happen;
    /// after a `Retrying`, everything streamed before it is void. Transient failures are
    /// retried per the config's [`RetryPolicy`]. When `cancel` fires, the stream stops
    /// at once and the result is [`LlmError::Cancelled`].
    async fn stream(
        &self,
        request: &ModelRequest,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
        cancel: &CancellationToken,
    ) -> Result<ModelResponse, LlmError>;

    fn kind(&self) -> ProviderKind;
}

/// Makes the client for `config`. Cheap: the HTTP client is built on the first request.
pub fn client(config: ProviderConfig) -> Result<Box<dyn ModelClient>, LlmError> {
    Ok(match config.kind {
        ProviderKind::Anthropic => {
            Box::new(transport::HttpClient::<anthropic::Anthropic>::new(config)?)
        }
        ProviderKind::OpenAi => Box::new(transport::HttpClient::<openai::OpenAi>::new(config)?),
        ProviderKind::Ollama => Box::new(transport::HttpClient::<ollama::Ollama>::new(config)?),
    })
}

/// Turns streamed tool-call arguments into the call's input: a JSON object, `{}` for
/// empty arguments, or `{"__invalid_json": raw}` when they are not a JSON object.
pub fn parse_tool_input(raw: &str) -> Value {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Value::Object(Default::default());
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => invalid_input(raw),
    }
}

fn invalid_input(raw: &str) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(INVALID_JSON_KEY.to_string(), Value::String(raw.to_string()));
    Value::Object(map)
}

/// The raw arguments of a tool call whose arguments were not a JSON object (see
/// [`INVALID_JSON_KEY`]); the core answers such a call with an error result.
pub fn invalid_tool_input(input: &Value) -> Option<&str> {
    input.get(INVALID_JSON_KEY).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn provider_names_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!("OpenAI".parse::<ProviderKind>(), Ok(ProviderKind::OpenAi));
        let err = "gemini"
            .parse::<ProviderKind>()
            .expect_err("not a provider");
        assert_eq!(
            err.to_string(),
            "unknown provider `gemini`: use anthropic, openai or ollama"
        );
    }

    #[test]
    fn tool_input_parsing() {
        assert_eq!(parse_tool_input(""), json!({}));
        assert_eq!(parse_tool_input("  "), json!({}));
        assert_eq!(parse_tool_input("{\"a\":1}"), json!({"a": 1}));
        let bad = parse_tool_input("{\"a\":");
        assert_eq!(invalid_tool_input(&bad), Some("{\"a\":"));
        assert_eq!(invalid_tool_input(&parse_tool_input("[1]")), Some("[1]"));
        assert_eq!(invalid_tool_input(&json!({"a": 1})), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for retry in 1..=10 {
            let d = policy.backoff(retry);
            let cap = (100u64 << (retry - 1)).min(1000);
            assert!(d >= Duration::from_millis(cap / 2), "{retry}: {d:?}");
            assert!(d <= Duration::from_millis(cap), "{retry}: {d:?}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let mut config = ProviderConfig::new(ProviderKind::OpenAi);
        config.api_key = Some("sk-secret-123".into());
        assert!(!format!("{config:?}").contains("sk-secret"));
    }
}
