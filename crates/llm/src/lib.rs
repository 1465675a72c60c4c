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
//!   input becomes [`ToolInput::Invalid`] (the raw text and the parse error), which the
//!   core answers with an error result so the model can correct itself. Each wire sends
//!   such a call back as faithfully as its API allows (OpenAI: the raw text; Anthropic
//!   and Ollama, which want an object: `{}`, the error and raw text being in the result).
//! - Real servers differ from the documented APIs (docs/interop.md): an assistant
//!   message that only calls tools carries `content: ""`, `tool_choice` is always sent
//!   with tools, an empty HTTP 200 to a streamed request is asked again without
//!   streaming (and the client remembers it), several tool calls with one id are merged
//!   or renamed with a [`StreamEvent::Warning`], an empty reply is retried once.
//! - Streams are bounded ([`StreamLimits`]): an idle timeout between events (keep-alive
//!   comments and pings do not count), an overall cap per reply, a size cap.
//! - The context window is asked of the server where it says it
//!   ([`ModelClient::context_window`]) and `max_tokens` is clamped to what fits.
//! - One `reqwest::Client` per model client, built on first use (connection pooling,
//!   rustls with the bundled web PKI roots, so no certificate store is read).

mod anthropic;
mod calls;
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

pub use error::LlmError;
pub use safe_coder_protocol::{
    ContentBlock, Message, ModelRequest, ModelResponse, Role, StopReason, StreamEvent, ToolInput,
    ToolSpec, Usage,
};
pub use tokio_util::sync::CancellationToken;

/// Output tokens asked for per reply when the config names no other number.
pub const DEFAULT_MAX_TOKENS: u32 = 8192;

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

/// Bounds on one reply, so that a stalled, keep-alive-only or endless stream cannot hang
/// a session or fill memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Longest silence between two events of a reply once its headers have arrived.
    /// Keep-alive comments and `ping` events do not count as events. Cut replies are
    /// retried like any broken stream.
    pub idle_timeout: Duration,
    /// Longest time one attempt may take, from sending the request to the final event
    /// (retried once cut).
    pub overall_timeout: Duration,
    /// Largest reply body accepted; a larger one is refused, never buffered.
    pub max_reply_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            idle_timeout: Duration::from_secs(120),
            overall_timeout: Duration::from_secs(30 * 60),
            max_reply_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Which tool the model may or must call when tools are offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (`tool_choice: "auto"`, sent explicitly: some servers treat
    /// a missing `tool_choice` as "none").
    #[default]
    Auto,
    /// The model must call some tool on every request (`"required"` / `{"type":"any"}`).
    Required,
    /// The first reply of each user turn (a request whose last message is the user's
    /// text, not tool results) must call this function; later requests of the turn are
    /// `Auto`, so the turn can end. Used by the interop suite to make a small model call
    /// a tool.
    Function(String),
}

impl ToolChoice {
    /// `auto`, `required`, or a function name.
    pub fn parse(text: &str) -> ToolChoice {
        match text.trim() {
            "" | "auto" => ToolChoice::Auto,
            "required" | "any" => ToolChoice::Required,
            name => ToolChoice::Function(name.to_string()),
        }
    }
}

/// Everything needed to talk to one provider.
#[derive(Clone, PartialEq)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// In the ecosystem's convention (see [`ProviderKind::default_base_url`]); a
    /// trailing `/` is ignored.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub max_tokens: u32,
    pub retry: RetryPolicy,
    pub limits: StreamLimits,
    pub tool_choice: ToolChoice,
    /// Sampling temperature; `None` leaves the server's default.
    pub temperature: Option<f64>,
    /// Sampling seed (OpenAI-compatible servers and Ollama); `None` sends none.
    pub seed: Option<u64>,
    /// Anthropic prompt caching (`cache_control` breakpoints, the system prompt as a
    /// block); `None`: on for `api.anthropic.com` only, since proxies in front of other
    /// servers turn the blocks into content parts some servers refuse.
    pub prompt_cache: Option<bool>,
}

/// Environment variables read by [`ProviderConfig::new`] (documented in
/// docs/providers.md): operational and test knobs, not user settings.
pub const ENV_TOOL_CHOICE: &str = "SAFE_CODER_TOOL_CHOICE";
pub const ENV_STREAM_IDLE_SECS: &str = "SAFE_CODER_STREAM_IDLE_TIMEOUT_SECS";
pub const ENV_STREAM_MAX_SECS: &str = "SAFE_CODER_STREAM_MAX_SECS";
pub const ENV_MAX_REPLY_BYTES: &str = "SAFE_CODER_MAX_REPLY_BYTES";
pub const ENV_TEMPERATURE: &str = "SAFE_CODER_TEMPERATURE";
pub const ENV_SEED: &str = "SAFE_CODER_SEED";
pub const ENV_PROMPT_CACHE: &str = "SAFE_CODER_PROMPT_CACHE";

impl ProviderConfig {
    /// The provider's defaults (base URL, model, 8192 output tokens, default retries,
    /// default [`StreamLimits`], `tool_choice` auto, the server's sampling), then the
    /// overrides of [`ENV_TOOL_CHOICE`], [`ENV_STREAM_IDLE_SECS`],
    /// [`ENV_STREAM_MAX_SECS`], [`ENV_MAX_REPLY_BYTES`], [`ENV_TEMPERATURE`],
    /// [`ENV_SEED`] and [`ENV_PROMPT_CACHE`] where set to a valid value.
    pub fn new(kind: ProviderKind) -> Self {
        let mut config = ProviderConfig {
            kind,
            base_url: kind.default_base_url().to_string(),
            api_key: None,
            model: kind.default_model().to_string(),
            max_tokens: DEFAULT_MAX_TOKENS,
            retry: RetryPolicy::default(),
            limits: StreamLimits::default(),
            tool_choice: ToolChoice::Auto,
            temperature: None,
            seed: None,
            prompt_cache: None,
        };
        config.apply_env(|name| std::env::var(name).ok());
        config
    }

    /// Applies the `SAFE_CODER_*` overrides that `get` returns; unparsable numbers are
    /// ignored.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let secs = |name: &str| {
            get(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(Duration::from_secs_f64)
        };
        if let Some(choice) = get(ENV_TOOL_CHOICE) {
            self.tool_choice = ToolChoice::parse(&choice);
        }
        if let Some(d) = secs(ENV_STREAM_IDLE_SECS) {
            self.limits.idle_timeout = d;
        }
        if let Some(d) = secs(ENV_STREAM_MAX_SECS) {
            self.limits.overall_timeout = d;
        }
        if let Some(n) = get(ENV_MAX_REPLY_BYTES)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
        {
            self.limits.max_reply_bytes = n;
        }
        if let Some(t) = get(ENV_TEMPERATURE)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t >= 0.0)
        {
            self.temperature = Some(t);
        }
        if let Some(seed) = get(ENV_SEED).and_then(|v| v.trim().parse::<u64>().ok()) {
            self.seed = Some(seed);
        }
        match get(ENV_PROMPT_CACHE).as_deref().map(str::trim) {
            Some("1" | "true" | "on") => self.prompt_cache = Some(true),
            Some("0" | "false" | "off") => self.prompt_cache = Some(false),
            _ => {}
        }
    }

    /// Whether Anthropic requests carry `cache_control` (see [`Self::prompt_cache`]).
    pub fn prompt_cache_enabled(&self) -> bool {
        self.prompt_cache
            .unwrap_or_else(|| self.base_url.contains("://api.anthropic.com"))
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
            .field("limits", &self.limits)
            .field("tool_choice", &self.tool_choice)
            .field("temperature", &self.temperature)
            .field("seed", &self.seed)
            .field("prompt_cache", &self.prompt_cache)
            .finish()
    }
}

/// A model API client.
#[async_trait]
pub trait ModelClient: Send + Sync {
    /// Streams one reply. `on_event` receives [`StreamEvent::TextDelta`],
    /// [`StreamEvent::ToolCallStarted`], [`StreamEvent::Retrying`] and
    /// [`StreamEvent::Warning`] as they happen; after a `Retrying`, everything streamed
    /// before it is void. Transient failures are retried per the config's
    /// [`RetryPolicy`]. When `cancel` fires, the stream stops at once and the result is
    /// [`LlmError::Cancelled`]. A reply cut at the output limit comes back with
    /// [`StopReason::MaxTokens`]; an empty reply (no text, no tool call, no output
    /// tokens) is asked again once, then is [`LlmError::EmptyReply`].
    async fn stream(
        &self,
        request: &ModelRequest,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
        cancel: &CancellationToken,
    ) -> Result<ModelResponse, LlmError>;

    fn kind(&self) -> ProviderKind;

    /// The model's context window in tokens, where the server says it (OpenAI-compatible
    /// `/v1/models` metadata, llama.cpp's `/props`, Ollama's `/api/show`) or where an
    /// earlier context-overflow error named it; `None` when unknown. Asked once per
    /// client and cached; never fails (an unanswered question is `None`).
    async fn context_window(&self) -> Option<u64> {
        None
    }
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

/// Turns streamed tool-call arguments into the call's input (see [`ToolInput::parse`]).
pub fn parse_tool_input(raw: &str) -> ToolInput {
    ToolInput::parse(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn env_overrides() {
        let mut config = ProviderConfig::new(ProviderKind::OpenAi);
        config.apply_env(|name| match name {
            ENV_TOOL_CHOICE => Some("read_file".into()),
            ENV_STREAM_IDLE_SECS => Some("1.5".into()),
            ENV_STREAM_MAX_SECS => Some("nonsense".into()),
            ENV_MAX_REPLY_BYTES => Some("4096".into()),
            ENV_TEMPERATURE => Some("0".into()),
            ENV_SEED => Some("42".into()),
            _ => None,
        });
        assert_eq!(config.temperature, Some(0.0));
        assert_eq!(config.seed, Some(42));
        assert_eq!(config.tool_choice, ToolChoice::Function("read_file".into()));
        assert_eq!(config.limits.idle_timeout, Duration::from_millis(1500));
        assert_eq!(
            config.limits.overall_timeout,
            StreamLimits::default().overall_timeout
        );
        assert_eq!(config.limits.max_reply_bytes, 4096);
        assert_eq!(ToolChoice::parse("auto"), ToolChoice::Auto);
        assert_eq!(ToolChoice::parse("required"), ToolChoice::Required);
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
