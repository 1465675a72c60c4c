use crate::ProviderKind;

/// Why a model request failed. Every message is one sentence that names the fix; none
/// ever contains the API key.
///
/// By the time the core sees an error, transient failures (429, 5xx, refused or reset
/// connections, cut or garbled streams, mid-stream `error` events) have already been
/// retried as the [`crate::RetryPolicy`] allows: the variants that carry `attempts` are
/// those failures after the last attempt. The others are never retried.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The cancellation token fired.
    #[error("the model request was cancelled")]
    Cancelled,

    /// No key is configured for a provider that needs one (not retried).
    #[error("no API key is set for {provider}: set {env} or run `safe-coder config --provider {provider} --api-key KEY`", env = provider.api_key_env().unwrap_or("the key"))]
    MissingApiKey { provider: ProviderKind },

    /// The key has characters an HTTP header cannot carry (not retried).
    #[error("the API key for {provider} contains spaces or characters that cannot be sent: set it again with `safe-coder config --api-key KEY`")]
    InvalidApiKey { provider: ProviderKind },

    /// The base URL is not a usable http(s) URL (not retried).
    #[error("the base URL `{url}` is not valid ({detail}): set it with --base-url or `safe-coder config --base-url URL`, e.g. {example}", example = provider.default_base_url())]
    InvalidBaseUrl {
        provider: ProviderKind,
        url: String,
        detail: String,
    },

    /// The request could not be encoded as JSON (a bug).
    #[error("the request for {provider} could not be encoded ({detail}): this is a bug, please report it")]
    Encode {
        provider: ProviderKind,
        detail: String,
    },

    /// HTTP 401 (not retried).
    #[error("the {provider} API rejected the API key (HTTP 401): {fix}", fix = auth_fix(*provider))]
    Auth { provider: ProviderKind },

    /// HTTP 403 (not retried).
    #[error("the {provider} API refused access (HTTP 403: {detail}): check that your account may use this model, or choose another with --model")]
    PermissionDenied {
        provider: ProviderKind,
        detail: String,
    },

    /// The API does not know the model (not retried).
    #[error("the {provider} API does not know the model `{model}`: {fix}", fix = model_fix(*provider, model))]
    ModelNotFound {
        provider: ProviderKind,
        model: String,
    },

    /// HTTP 404 that is not about the model: usually a base URL with or without `/v1`.
    #[error("the {provider} endpoint {url} does not exist (HTTP 404): check the base URL, e.g. {example}", example = base_url_hint(*provider))]
    EndpointNotFound { provider: ProviderKind, url: String },

    /// HTTP 200 with a web page: the base URL points at a website, not the API.
    #[error("the server at {url} answered with a web page ({content_type}), not the {provider} API: check the base URL, e.g. {example}", example = base_url_hint(*provider))]
    NotAnApi {
        provider: ProviderKind,
        url: String,
        content_type: String,
    },

    /// The model cannot call tools (Ollama: "... does not support tools").
    #[error("the model `{model}` does not support tool calling, which Safe Coder needs: choose one that does with --model or `safe-coder config --model NAME`{hint}", hint = if *provider == ProviderKind::Ollama { " (e.g. qwen2.5-coder or llama3.1)" } else { "" })]
    NoToolSupport {
        provider: ProviderKind,
        model: String,
    },

    /// The conversation no longer fits the model's context window (not retried). The
    /// message gives no front-end advice: each front end matches this variant and says
    /// what fits it (compact the conversation, start a new session, shorten the prompt).
    #[error("the conversation is too long for the model's context window{}: {detail}", window.map(|n| format!(" of {n} tokens")).unwrap_or_default())]
    ContextOverflow {
        provider: ProviderKind,
        /// The window, when the server's error named it.
        window: Option<u64>,
        detail: String,
    },

    /// The model sent nothing (no text, no tool call, no output tokens) on both tries.
    #[error("the {provider} model `{model}` sent an empty reply twice: try again, or choose another model with --model")]
    EmptyReply {
        provider: ProviderKind,
        model: String,
    },

    /// The reply grew past the size cap (not retried).
    #[error("the {provider} reply was larger than {limit} bytes and was refused: check the server, or raise SAFE_CODER_MAX_REPLY_BYTES")]
    ReplyTooLarge {
        provider: ProviderKind,
        limit: usize,
    },

    /// Another 4xx: the request itself was refused (not retried).
    #[error("the {provider} API rejected the request (HTTP {status}: {detail}): check the model name and the base URL, or report this as a bug")]
    BadRequest {
        provider: ProviderKind,
        status: u16,
        detail: String,
    },

    /// Still rate limited after the last retry.
    #[error("the {provider} API is still rate limiting after {attempts} attempts (HTTP 429: {detail}): wait a minute and try again, or check your plan's limits")]
    RateLimited {
        provider: ProviderKind,
        attempts: u32,
        detail: String,
    },

    /// Still failing with a 5xx (or a mid-stream `error` event) after the last retry.
    #[error(
        "the {provider} API kept failing after {attempts} attempts ({detail}): try again later"
    )]
    Server {
        provider: ProviderKind,
        attempts: u32,
        detail: String,
    },

    /// The server could not be reached after the last retry.
    #[error("could not reach the {provider} API at {url} after {attempts} attempts ({detail}): {fix}", fix = connect_fix(*provider))]
    Connect {
        provider: ProviderKind,
        url: String,
        attempts: u32,
        detail: String,
    },

    /// The reply stream ended before its final event on every attempt; the partial
    /// reply was discarded.
    #[error("the {provider} reply stream broke off before the end after {attempts} attempts ({detail}): try again, and check any proxy between you and the API")]
    StreamCut {
        provider: ProviderKind,
        attempts: u32,
        detail: String,
    },

    /// The reply could not be decoded on every attempt.
    #[error("the {provider} API sent a reply that could not be understood after {attempts} attempts ({detail}): check that the base URL points at a {provider}-compatible API")]
    Malformed {
        provider: ProviderKind,
        attempts: u32,
        detail: String,
    },
}

fn auth_fix(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Anthropic => "set ANTHROPIC_API_KEY or run `safe-coder config --api-key KEY`",
        ProviderKind::OpenAi => "set OPENAI_API_KEY or run `safe-coder config --api-key KEY`",
        ProviderKind::Ollama => "set it with `safe-coder config --api-key KEY`",
    }
}

fn model_fix(provider: ProviderKind, model: &str) -> String {
    match provider {
        ProviderKind::Ollama => format!(
            "run `ollama pull {model}`, or choose an installed model with --model or `safe-coder config --model NAME`"
        ),
        _ => "choose another with --model or `safe-coder config --model NAME`".to_string(),
    }
}

fn base_url_hint(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Anthropic => "https://api.anthropic.com (without /v1)",
        ProviderKind::OpenAi => "https://api.openai.com/v1 (with /v1)",
        ProviderKind::Ollama => "http://localhost:11434 (the server's address, without /api)",
    }
}

fn connect_fix(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Ollama => {
            "is `ollama serve` running? set OLLAMA_HOST or --base-url if it listens elsewhere"
        }
        ProviderKind::OpenAi => {
            "check the base URL (OPENAI_BASE_URL or --base-url) and your network"
        }
        ProviderKind::Anthropic => "check the base URL (--base-url) and your network",
    }
}

impl LlmError {
    /// Whether the error is about configuration the user must change (key, model, URL)
    /// rather than a passing failure.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            LlmError::MissingApiKey { .. }
                | LlmError::InvalidApiKey { .. }
                | LlmError::InvalidBaseUrl { .. }
                | LlmError::Auth { .. }
                | LlmError::PermissionDenied { .. }
                | LlmError::ModelNotFound { .. }
                | LlmError::EndpointNotFound { .. }
                | LlmError::NotAnApi { .. }
                | LlmError::NoToolSupport { .. }
        )
    }
}
