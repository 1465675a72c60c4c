//! The shared HTTP side of every provider: the lazily built `reqwest::Client`, one
//! attempt (send, classify the status, feed the body to the wire's stream state), and
//! the retry loop with backoff, `retry-after` and cancellation.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::RequestBuilder;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    LlmError, ModelClient, ModelRequest, ModelResponse, ProviderConfig, ProviderKind, Role,
    StreamEvent, ToolChoice, MAX_RETRY_AFTER,
};

/// The callback type every layer passes down.
pub(crate) type OnEvent<'a> = &'a mut (dyn FnMut(StreamEvent) + Send);

/// How long an error body or the tail after the final event may take to arrive.
const BODY_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the end of the HTTP body after the final event, so that the
/// connection goes back to the pool.
const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Error bodies are read up to this size.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long the context-window questions may take in all.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// A failure of one attempt.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another attempt.
    Retry(Transient),
    /// Final at once.
    Fatal(LlmError),
}

#[derive(Debug)]
pub(crate) struct Transient {
    pub kind: TransientKind,
    /// Said in `Retrying` events and in the final error.
    pub detail: String,
    pub retry_after: Option<Duration>,
    /// The request went out on a pooled connection the server had closed: worth one
    /// immediate, silent retry on a fresh connection.
    pub stale_connection: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransientKind {
    RateLimited,
    Server,
    Connect,
    StreamCut,
    Malformed,
    /// HTTP 200 whose body ended before its first byte: how llama.cpp's server (and
    /// others) report an error raised after a streamed reply has begun.
    EmptyBody,
}

impl Failure {
    pub fn retry(kind: TransientKind, detail: impl Into<String>) -> Failure {
        Failure::Retry(Transient {
            kind,
            detail: detail.into(),
            retry_after: None,
            stale_connection: false,
        })
    }

    pub fn malformed(detail: impl Into<String>) -> Failure {
        Failure::retry(TransientKind::Malformed, detail)
    }

    pub fn cut(detail: impl Into<String>) -> Failure {
        Failure::retry(TransientKind::StreamCut, detail)
    }
}

/// What an API error body says.
#[derive(Debug, Default)]
pub(crate) struct ErrorInfo {
    /// The error's type or code (`not_found_error`, `model_not_found`...).
    pub code: String,
    pub message: String,
}

/// One wire format.
pub(crate) trait Wire: Send + Sync + 'static {
    const KIND: ProviderKind;
    /// Appended to the base URL.
    const PATH: &'static str;
    type State: StreamState;

    fn headers(rb: RequestBuilder, config: &ProviderConfig) -> RequestBuilder;
    /// The request body, serialised straight from borrowed data (no `Value` tree:
    /// long conversations are encoded at serde_json speed without copies).
    fn body(
        request: &ModelRequest,
        model: &str,
        max_tokens: u32,
        config: &ProviderConfig,
        stream: bool,
    ) -> serde_json::Result<Vec<u8>>;
    fn error_info(body: &str) -> ErrorInfo;
    /// Decodes a reply the server sent as one JSON document although a stream was
    /// asked for (some compatible servers do).
    fn parse_full(body: &[u8], on_event: OnEvent<'_>) -> Result<ModelResponse, Failure>;
}

/// Assembles one streamed reply.
/// `Authorization: Bearer KEY` when a non-blank key is configured (OpenAI and
/// compatible servers; Ollama behind ollama.com or a proxy). A local server needs none.
pub(crate) fn bearer_auth(
    rb: reqwest::RequestBuilder,
    config: &ProviderConfig,
) -> reqwest::RequestBuilder {
    match config.api_key.as_deref().map(str::trim) {
        Some(key) if !key.is_empty() => rb.bearer_auth(key),
        _ => rb,
    }
}

/// Feeds `pieces` to a fresh stream state as if they arrived one by one: the decoders'
/// unit tests split each recorded stream at every boundary with it.
#[cfg(test)]
pub(crate) fn decode_pieces<S: StreamState>(
    pieces: &[&[u8]],
) -> (Result<ModelResponse, Failure>, Vec<crate::StreamEvent>) {
    let mut events = Vec::new();
    let mut on_event = |e: crate::StreamEvent| events.push(e);
    let mut state = S::new();
    for piece in pieces {
        match state.feed(piece, &mut on_event) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return (Err(e), events),
        }
    }
    let result = state.finish(&mut on_event);
    (result, events)
}

pub(crate) trait StreamState: Send {
    fn new() -> Self;
    /// Feeds received bytes; `Ok(true)` once the final event was seen.
    fn feed(&mut self, bytes: &[u8], on_event: OnEvent<'_>) -> Result<bool, Failure>;
    /// How many events that carry content or state have been decoded; keep-alive
    /// comments and pings do not count. The idle timeout is measured between changes of
    /// this number, so a server that only sends keep-alives is cut.
    fn progress(&self) -> u64;
    /// The complete reply, or a failure if the stream ended early. Repairs of the
    /// reply (duplicate tool-call ids) are reported through `on_event`.
    fn finish(self, on_event: OnEvent<'_>) -> Result<ModelResponse, Failure>;
}

/// The function the request must call, if the config forces one for this request: only
/// the first request of a user turn (its last message is the user's own text).
pub(crate) fn forced_function<'a>(
    request: &ModelRequest,
    config: &'a ProviderConfig,
) -> Option<&'a str> {
    let ToolChoice::Function(name) = &config.tool_choice else {
        return None;
    };
    if request.tools.is_empty() {
        return None;
    }
    let last = request.messages.last()?;
    let user_text = last.role == Role::User
        && !last
            .content
            .iter()
            .any(|b| matches!(b, crate::ContentBlock::ToolResult { .. }));
    user_text.then_some(name.as_str())
}

pub(crate) struct HttpClient<W> {
    config: ProviderConfig,
    /// The base URL without a trailing `/`.
    base: String,
    url: String,
    loopback: bool,
    http: OnceLock<reqwest::Client>,
    /// Set once the server answered a streamed request with an empty HTTP 200 and the
    /// same request without streaming worked: from then on this client does not stream.
    non_streaming: AtomicBool,
    /// What the server said about the context window, asked once.
    discovered_window: tokio::sync::OnceCell<Option<u64>>,
    /// A window named by a context-overflow error (0: none yet).
    learned_window: AtomicU64,
    _wire: PhantomData<fn() -> W>,
}

impl<W: Wire> HttpClient<W> {
    pub fn new(config: ProviderConfig) -> Result<Self, LlmError> {
        let base = config.base_url.trim().trim_end_matches('/').to_string();
        let invalid = |detail: &str| LlmError::InvalidBaseUrl {
            provider: W::KIND,
            url: config.base_url.clone(),
            detail: detail.to_string(),
        };
        let parsed = reqwest::Url::parse(&base).map_err(|e| invalid(&e.to_string()))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(invalid("it must start with http:// or https://"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("it has no host"))?
            .to_ascii_lowercase();
        let official = match W::KIND {
            ProviderKind::Anthropic => host == "api.anthropic.com",
            ProviderKind::OpenAi => host == "api.openai.com",
            ProviderKind::Ollama => false,
        };
        if official
            && config
                .api_key
                .as_deref()
                .is_none_or(|k| k.trim().is_empty())
        {
            return Err(LlmError::MissingApiKey { provider: W::KIND });
        }
        if let Some(key) = &config.api_key {
            // A header value must be visible ASCII; a pasted key with a newline or a
            // curly quote would otherwise fail every request with a confusing error.
            if key.trim().chars().any(|c| !c.is_ascii_graphic()) {
                return Err(LlmError::InvalidApiKey { provider: W::KIND });
            }
        }
        let loopback =
            host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1";
        Ok(HttpClient {
            url: format!("{base}{}", W::PATH),
            base,
            config,
            loopback,
            http: OnceLock::new(),
            non_streaming: AtomicBool::new(false),
            discovered_window: tokio::sync::OnceCell::new(),
            learned_window: AtomicU64::new(0),
            _wire: PhantomData,
        })
    }

    fn http(&self) -> Result<&reqwest::Client, LlmError> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("safe-coder/", env!("CARGO_PKG_VERSION")));
        if self.loopback {
            // A local server never goes through HTTP(S)_PROXY.
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| LlmError::Connect {
            provider: W::KIND,
            url: self.url.clone(),
            attempts: 1,
            detail: format!("the HTTP client could not be set up: {}", error_chain(&e)),
        })?;
        Ok(self.http.get_or_init(|| client))
    }

    async fn run(
        &self,
        request: &ModelRequest,
        on_event: OnEvent<'_>,
        cancel: &CancellationToken,
    ) -> Result<ModelResponse, LlmError> {
        let model = if request.model.is_empty() {
            self.config.model.as_str()
        } else {
            request.model.as_str()
        };
        let mut max_tokens = if request.max_tokens == 0 {
            self.config.max_tokens
        } else {
            request.max_tokens
        };
        let encode = |max_tokens: u32, stream: bool| {
            W::body(request, model, max_tokens, &self.config, stream)
                .map(Bytes::from)
                .map_err(|e| LlmError::Encode {
                    provider: W::KIND,
                    detail: e.to_string(),
                })
        };
        let mut streamed_body = encode(max_tokens, true)?;
        let http = self.http()?;
        let window = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(LlmError::Cancelled),
            window = self.context_window_inner(http) => window,
        };
        if let Some(window) = window {
            let clamped = clamp_max_tokens(max_tokens, window, streamed_body.len());
            if clamped != max_tokens {
                max_tokens = clamped;
                streamed_body = encode(max_tokens, true)?;
            }
        }
        let mut plain_body: Option<Bytes> = None;
        let mut streaming = !self.non_streaming.load(Ordering::Relaxed);
        // Whether this request fell back to a non-streamed request after an empty 200.
        let mut fell_back = false;
        let mut empty_retried = false;
        let mut stale_retried = false;
        let mut retries = 0u32;
        loop {
            if cancel.is_cancelled() {
                return Err(LlmError::Cancelled);
            }
            let body = if streaming {
                streamed_body.clone()
            } else {
                match &plain_body {
                    Some(b) => b.clone(),
                    None => plain_body.insert(encode(max_tokens, false)?).clone(),
                }
            };
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                outcome = self.attempt(http, body, model, streaming, &mut *on_event) => outcome,
            };
            // A stale connection says nothing yet about the fallback: it is sent again.
            let resent =
                !stale_retried && matches!(&outcome, Err(Failure::Retry(t)) if t.stale_connection);
            if fell_back && !resent {
                fell_back = false;
                // Remembered only when the non-streamed request got a real reply where
                // the streamed one got nothing; after an error (a context overflow) the
                // next request streams again.
                let worked = matches!(&outcome, Ok(response) if !is_empty_reply(response));
                if worked && !self.non_streaming.swap(true, Ordering::Relaxed) {
                    on_event(StreamEvent::Warning {
                        message: format!(
                            "the {} server at {} answered a streamed request with an empty reply; Safe Coder asks it without streaming from now on",
                            W::KIND,
                            self.base
                        ),
                    });
                }
            }
            let transient = match outcome {
                Ok(response) if is_empty_reply(&response) => {
                    if empty_retried {
                        return Err(LlmError::EmptyReply {
                            provider: W::KIND,
                            model: model.to_string(),
                        });
                    }
                    empty_retried = true;
                    retries += 1;
                    // A proxy in front of a server that fails under streaming (LiteLLM
                    // before llama.cpp) turns the empty 200 into an empty reply: the
                    // second try goes without streaming.
                    let reason = if streaming {
                        streaming = false;
                        fell_back = true;
                        "the model sent an empty reply (no text, no tool call); asking again without streaming"
                    } else {
                        "the model sent an empty reply (no text, no tool call)"
                    };
                    on_event(StreamEvent::Retrying {
                        attempt: retries,
                        delay_ms: 0,
                        reason: reason.into(),
                    });
                    continue;
                }
                Ok(response) => return Ok(response),
                Err(Failure::Fatal(e)) => return Err(e),
                // Nothing was streamed: no `Retrying` event, no backoff.
                Err(Failure::Retry(t)) if t.stale_connection && !stale_retried => {
                    stale_retried = true;
                    continue;
                }
                Err(Failure::Retry(t)) if t.kind == TransientKind::EmptyBody && streaming => {
                    // Ask again at once without streaming: the server's real error (a
                    // context overflow, a template failure) then arrives as a status.
                    streaming = false;
                    fell_back = true;
                    retries += 1;
                    on_event(StreamEvent::Retrying {
                        attempt: retries,
                        delay_ms: 0,
                        reason: format!("{}; asking again without streaming", t.detail),
                    });
                    continue;
                }
                Err(Failure::Retry(t)) => t,
            };
            let attempts = retries + 1;
            if retries >= self.config.retry.max_retries {
                return Err(self.final_error(transient, attempts));
            }
            let delay = match transient.retry_after {
                Some(after) if after > MAX_RETRY_AFTER => {
                    return Err(self.final_error(transient, attempts));
                }
                Some(after) => after,
                None => self.config.retry.backoff(retries + 1),
            };
            retries += 1;
            on_event(StreamEvent::Retrying {
                attempt: retries,
                delay_ms: delay.as_millis() as u64,
                reason: transient.detail,
            });
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The context window: what the server said when asked (once), else what an
    /// overflow error named.
    async fn context_window_inner(&self, http: &reqwest::Client) -> Option<u64> {
        let discovered = *self
            .discovered_window
            .get_or_init(|| async {
                tokio::time::timeout(DISCOVERY_TIMEOUT, self.discover(http))
                    .await
                    .ok()
                    .flatten()
            })
            .await;
        discovered.or(match self.learned_window.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        })
    }

    /// Asks the server for the model's context window, where its API says it.
    async fn discover(&self, http: &reqwest::Client) -> Option<u64> {
        let get_json = |url: String| async move {
            // With the key: a server started with one (vLLM `--api-key`) wants it here too.
            let mut response = W::headers(http.get(&url), &self.config).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            serde_json::from_str::<Value>(&read_limited(&mut response, 8 * 1024 * 1024).await).ok()
        };
        match W::KIND {
            ProviderKind::Anthropic => None,
            ProviderKind::OpenAi => {
                if self.base.contains("://api.openai.com") {
                    return None;
                }
                // llama.cpp's own server: `/props` at the root (the base minus `/v1`)
                // has the runtime `n_ctx`.
                let root = self.base.strip_suffix("/v1").unwrap_or(&self.base);
                if let Some(props) = get_json(format!("{root}/props")).await {
                    let n = props
                        .pointer("/default_generation_settings/n_ctx")
                        .or_else(|| props.get("n_ctx"))
                        .and_then(Value::as_u64);
                    if n.is_some() {
                        return n;
                    }
                }
                let models = get_json(format!("{}/models", self.base)).await?;
                models_window(&models, &self.config.model)
            }
            ProviderKind::Ollama => {
                let mut response =
                    W::headers(http.post(format!("{}/api/show", self.base)), &self.config)
                        .header(CONTENT_TYPE, "application/json")
                        .body(serde_json::json!({ "model": self.config.model }).to_string())
                        .send()
                        .await
                        .ok()?;
                if !response.status().is_success() {
                    return None;
                }
                // `/api/show` carries the tokenizer's vocabulary on some models: allow
                // a large body.
                let text = read_limited(&mut response, 16 * 1024 * 1024).await;
                let show: Value = serde_json::from_str(&text).ok()?;
                ollama_window(&show)
            }
        }
    }

    fn final_error(&self, t: Transient, attempts: u32) -> LlmError {
        let provider = W::KIND;
        let detail = t.detail;
        match t.kind {
            TransientKind::RateLimited => LlmError::RateLimited {
                provider,
                attempts,
                detail,
            },
            TransientKind::Server => LlmError::Server {
                provider,
                attempts,
                detail,
            },
            TransientKind::Connect => LlmError::Connect {
                provider,
                url: self.url.clone(),
                attempts,
                detail,
            },
            TransientKind::StreamCut | TransientKind::EmptyBody => LlmError::StreamCut {
                provider,
                attempts,
                detail,
            },
            TransientKind::Malformed => LlmError::Malformed {
                provider,
                attempts,
                detail,
            },
        }
    }

    async fn attempt(
        &self,
        http: &reqwest::Client,
        body: Bytes,
        model: &str,
        streaming: bool,
        on_event: OnEvent<'_>,
    ) -> Result<ModelResponse, Failure> {
        let limits = self.config.limits;
        let deadline = Instant::now() + limits.overall_timeout;
        let over_time = || {
            Failure::cut(format!(
                "the reply took longer than the {} s cap per reply",
                limits.overall_timeout.as_secs()
            ))
        };
        let rb = http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let rb = W::headers(rb, &self.config);
        let mut response = tokio::time::timeout(limits.overall_timeout, rb.send())
            .await
            .map_err(|_| over_time())?
            .map_err(|e| self.send_failure(&e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = retry_after(response.headers());
            let text = read_limited(&mut response, MAX_ERROR_BODY).await;
            return Err(self.status_failure(status, &text, retry_after, model));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if content_type.starts_with("text/html") {
            return Err(Failure::Fatal(LlmError::NotAnApi {
                provider: W::KIND,
                url: self.url.clone(),
                content_type,
            }));
        }
        let is_json = content_type.starts_with("application/json");
        if is_json && W::KIND != ProviderKind::Ollama {
            let bytes = self.read_full(&mut response, deadline).await?;
            if bytes.is_empty() {
                return Err(empty_body(streaming));
            }
            return W::parse_full(&bytes, on_event);
        }
        let mut state = W::State::new();
        let mut received = 0usize;
        let mut progress = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let now = Instant::now();
            let idle_left = limits
                .idle_timeout
                .saturating_sub(now.duration_since(last_progress));
            let wait = idle_left.min(deadline.saturating_duration_since(now));
            let chunk = match tokio::time::timeout(wait, response.chunk()).await {
                Ok(chunk) => chunk,
                Err(_) if Instant::now() >= deadline => return Err(over_time()),
                Err(_) => {
                    return Err(Failure::cut(format!(
                        "the server sent nothing but keep-alives (if anything) for {} s",
                        limits.idle_timeout.as_secs()
                    )))
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    received += bytes.len();
                    if received > limits.max_reply_bytes {
                        return Err(self.too_large());
                    }
                    let done = state.feed(&bytes, &mut *on_event)?;
                    if state.progress() != progress {
                        progress = state.progress();
                        last_progress = Instant::now();
                    }
                    if done {
                        drain(&mut response).await;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Failure::cut(format!(
                        "the connection broke mid-stream: {}",
                        error_chain(&e)
                    )))
                }
            }
        }
        if received == 0 {
            return Err(empty_body(streaming));
        }
        state.finish(on_event)
    }

    fn too_large(&self) -> Failure {
        Failure::Fatal(LlmError::ReplyTooLarge {
            provider: W::KIND,
            limit: self.config.limits.max_reply_bytes,
        })
    }

    /// A non-streamed reply, within the idle timeout, the deadline and the size cap.
    async fn read_full(
        &self,
        response: &mut reqwest::Response,
        deadline: Instant,
    ) -> Result<Vec<u8>, Failure> {
        let limits = self.config.limits;
        let mut buf = Vec::new();
        loop {
            let wait = limits
                .idle_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let chunk = tokio::time::timeout(wait, response.chunk())
                .await
                .map_err(|_| Failure::cut("the reply body stopped arriving"))?;
            match chunk {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > limits.max_reply_bytes {
                        return Err(self.too_large());
                    }
                }
                Ok(None) => return Ok(buf),
                Err(e) => {
                    return Err(Failure::cut(format!(
                        "the connection broke mid-reply: {}",
                        error_chain(&e)
                    )))
                }
            }
        }
    }

    fn send_failure(&self, e: &reqwest::Error) -> Failure {
        if e.is_builder() {
            return Failure::Fatal(LlmError::InvalidBaseUrl {
                provider: W::KIND,
                url: self.config.base_url.clone(),
                detail: error_chain(e),
            });
        }
        let detail = if e.is_timeout() {
            "timed out".to_string()
        } else {
            error_chain(e)
        };
        // hyper's IncompleteMessage: the server closed a kept-alive connection (after
        // an error, or at its idle timeout) just as the request went out on it.
        let stale_connection = detail.contains("connection closed before message completed");
        Failure::Retry(Transient {
            kind: TransientKind::Connect,
            detail,
            retry_after: None,
            stale_connection,
        })
    }

    fn status_failure(
        &self,
        status: u16,
        body: &str,
        retry_after: Option<Duration>,
        model: &str,
    ) -> Failure {
        let provider = W::KIND;
        let info = W::error_info(body);
        let message = if info.message.is_empty() {
            one_line(body, 200)
        } else {
            one_line(&info.message, 300)
        };
        let about_model = is_unknown_model(&info, model);
        let detail = if message.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {message}")
        };
        match status {
            401 => Failure::Fatal(LlmError::Auth { provider }),
            403 => Failure::Fatal(LlmError::PermissionDenied {
                provider,
                detail: if message.is_empty() {
                    "forbidden".into()
                } else {
                    message
                },
            }),
            404 if about_model => Failure::Fatal(LlmError::ModelNotFound {
                provider,
                model: model.to_string(),
            }),
            404 => Failure::Fatal(LlmError::EndpointNotFound {
                provider,
                url: self.url.clone(),
            }),
            429 => Failure::Retry(Transient {
                kind: TransientKind::RateLimited,
                detail,
                retry_after,
                stale_connection: false,
            }),
            408 | 409 | 425 | 500..=599 => Failure::Retry(Transient {
                kind: TransientKind::Server,
                detail,
                retry_after,
                stale_connection: false,
            }),
            _ if about_model => Failure::Fatal(LlmError::ModelNotFound {
                provider,
                model: model.to_string(),
            }),
            _ if info.message.contains("does not support tools") => {
                Failure::Fatal(LlmError::NoToolSupport {
                    provider,
                    model: model.to_string(),
                })
            }
            _ if is_context_too_long(&info) => {
                let window = window_in_message(&info.message);
                if let Some(n) = window {
                    self.learned_window.store(n, Ordering::Relaxed);
                }
                Failure::Fatal(LlmError::ContextOverflow {
                    provider,
                    window,
                    detail: message,
                })
            }
            _ => Failure::Fatal(LlmError::BadRequest {
                provider,
                status,
                detail: if message.is_empty() {
                    "no details".into()
                } else {
                    message
                },
            }),
        }
    }
}

#[async_trait]
impl<W: Wire> ModelClient for HttpClient<W> {
    async fn stream(
        &self,
        request: &ModelRequest,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
        cancel: &CancellationToken,
    ) -> Result<ModelResponse, LlmError> {
        self.run(request, on_event, cancel).await
    }

    fn kind(&self) -> ProviderKind {
        W::KIND
    }

    async fn context_window(&self) -> Option<u64> {
        let http = self.http().ok()?;
        self.context_window_inner(http).await
    }
}

/// An empty HTTP 200: under streaming, the sign of a server-side error (asked again
/// without streaming); without, a server failure.
fn empty_body(streaming: bool) -> Failure {
    Failure::retry(
        if streaming {
            TransientKind::EmptyBody
        } else {
            TransientKind::Server
        },
        "the server answered HTTP 200 with an empty body",
    )
}

/// No text, no tool call, no output tokens.
fn is_empty_reply(response: &ModelResponse) -> bool {
    response.message.content.is_empty() && response.usage.output_tokens == 0
}

/// `max_tokens` within what the window leaves after the prompt (estimated at four bytes
/// a token of the request body), but never below a quarter of the window: the estimate
/// is rough, and a prompt that does not fit gets the server's own error.
pub(crate) fn clamp_max_tokens(max_tokens: u32, window: u64, body_len: usize) -> u32 {
    let prompt = (body_len as u64).div_ceil(4);
    let room = window.saturating_sub(prompt).max(window / 4).max(1);
    max_tokens.min(u32::try_from(room).unwrap_or(u32::MAX))
}

/// The context window in an OpenAI-compatible `/v1/models` listing: the entry of
/// `model` (or the only entry), under the names servers use for it.
pub(crate) fn models_window(models: &Value, model: &str) -> Option<u64> {
    let data = models.get("data")?.as_array()?;
    let entry = data
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(model))
        .or(if data.len() == 1 { data.first() } else { None })?;
    [
        "/context_length",
        "/context_window",
        "/max_model_len",
        "/max_context_length",
        "/top_provider/context_length",
        "/meta/n_ctx",
        "/meta/n_ctx_train",
    ]
    .iter()
    .find_map(|p| entry.pointer(p).and_then(Value::as_u64))
    .filter(|n| *n > 0)
}

/// Ollama's `/api/show`: the model's `num_ctx` parameter if set, else the architecture's
/// `*.context_length`.
pub(crate) fn ollama_window(show: &Value) -> Option<u64> {
    if let Some(params) = show.get("parameters").and_then(Value::as_str) {
        for line in params.lines() {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("num_ctx") {
                if let Some(n) = parts.next().and_then(|n| n.parse::<u64>().ok()) {
                    return Some(n);
                }
            }
        }
    }
    show.get("model_info")?
        .as_object()?
        .iter()
        .find(|(k, _)| k.ends_with(".context_length"))
        .and_then(|(_, v)| v.as_u64())
}

/// The window named in a context-overflow message, in the phrasings of OpenAI, vLLM,
/// llama.cpp, llama-cpp-python and Anthropic.
pub(crate) fn window_in_message(message: &str) -> Option<u64> {
    let lower = message.to_ascii_lowercase();
    let number_after = |marker: &str| -> Option<u64> {
        let at = lower.find(marker)? + marker.len();
        let digits: String = lower[at..]
            .chars()
            .skip_while(|c| *c == ' ' || *c == '(')
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok().filter(|n| *n > 0)
    };
    for marker in [
        "context window of",
        "maximum context length is",
        "available context size",
        "n_ctx:",
        "n_ctx =",
    ] {
        if let Some(n) = number_after(marker) {
            return Some(n);
        }
    }
    // Anthropic: "prompt is too long: 210000 tokens > 200000 maximum".
    let at = lower.find("> ")?;
    let rest = &lower[at + 2..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if rest[digits.len()..].trim_start().starts_with("maximum") {
        return digits.parse().ok();
    }
    None
}

fn is_unknown_model(info: &ErrorInfo, model: &str) -> bool {
    let code = info.code.to_ascii_lowercase();
    if code == "model_not_found" {
        return true;
    }
    let msg = info.message.to_ascii_lowercase();
    let mentions_model =
        msg.contains("model") || (!model.is_empty() && msg.contains(&model.to_ascii_lowercase()));
    mentions_model
        && (msg.contains("not found")
            || msg.contains("does not exist")
            || msg.contains("not_found")
            || code == "not_found_error")
}

fn is_context_too_long(info: &ErrorInfo) -> bool {
    let msg = info.message.to_ascii_lowercase();
    info.code == "context_length_exceeded"
        || msg.contains("prompt is too long")
        || msg.contains("context size")
        || msg.contains("context length")
        || msg.contains("context window")
        || msg.contains("maximum context")
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates are ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = get("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    get("retry-after").map(Duration::from_secs_f64)
}

async fn read_limited(response: &mut reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            buf.extend_from_slice(&chunk);
            if buf.len() >= limit {
                buf.truncate(limit);
                break;
            }
        }
    };
    let _ = tokio::time::timeout(BODY_GRACE, read).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads what is left of the body after the final event so the connection can be
/// reused; gives up quietly after a short grace.
async fn drain(response: &mut reqwest::Response) {
    let read = async { while let Ok(Some(_)) = response.chunk().await {} };
    let _ = tokio::time::timeout(DRAIN_GRACE, read).await;
}

/// The error and its sources, innermost last, e.g. "error sending request: connection
/// refused".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// `text` on one line, at most `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut out: String = flat.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// Reads a JSON error body of the common `{"error": {"type"|"code", "message"}}` or
/// `{"error": "message"}` shapes.
pub(crate) fn generic_error_info(body: &str) -> ErrorInfo {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return ErrorInfo {
            code: String::new(),
            message: one_line(body, 200),
        };
    };
    let err = value.get("error").unwrap_or(&value);
    if let Some(msg) = err.as_str() {
        return ErrorInfo {
            code: String::new(),
            message: msg.to_string(),
        };
    }
    let text = |key: &str| {
        err.get(key)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let code = text("code");
    ErrorInfo {
        code: if code.is_empty() { text("type") } else { code },
        message: text("message"),
    }
}
