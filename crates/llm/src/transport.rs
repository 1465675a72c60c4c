//! The shared HTTP side of every provider: the lazily built `reqwest::Client`, one
//! attempt (send, classify the status, feed the body to the wire's stream state), and
//! the retry loop with backoff, `retry-after` and cancellation.

use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::RequestBuilder;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    LlmError, ModelClient, ModelRequest, ModelResponse, ProviderConfig, ProviderKind, StreamEvent,
    MAX_RETRY_AFTER,
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
/// A non-streamed JSON reply is read up to this size.
const MAX_FULL_BODY: usize = 32 * 1024 * 1024;
/// A stream that stays silent this long is treated as cut.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransientKind {
    RateLimited,
    Server,
    Connect,
    StreamCut,
    Malformed,
}

impl Failure {
    pub fn retry(kind: TransientKind, detail: impl Into<String>) -> Failure {
        Failure::Retry(Transient {
            kind,
            detail: detail.into(),
            retry_after: None,
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
    (state.finish(), events)
}

pub(crate) trait StreamState: Send {
    fn new() -> Self;
    /// Feeds received bytes; `Ok(true)` once the final event was seen.
    fn feed(&mut self, bytes: &[u8], on_event: OnEvent<'_>) -> Result<bool, Failure>;
    /// The complete reply, or a failure if the stream ended early.
    fn finish(self) -> Result<ModelResponse, Failure>;
}

pub(crate) struct HttpClient<W> {
    config: ProviderConfig,
    url: String,
    loopback: bool,
    http: OnceLock<reqwest::Client>,
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
            config,
            loopback,
            http: OnceLock::new(),
            _wire: PhantomData,
        })
    }

    fn http(&self) -> Result<&reqwest::Client, LlmError> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_IDLE_TIMEOUT)
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
        let max_tokens = if request.max_tokens == 0 {
            self.config.max_tokens
        } else {
            request.max_tokens
        };
        let body =
            W::body(request, model, max_tokens, &self.config).map_err(|e| LlmError::Encode {
                provider: W::KIND,
                detail: e.to_string(),
            })?;
        let body = Bytes::from(body);
        let http = self.http()?;
        let mut retries = 0u32;
        loop {
            if cancel.is_cancelled() {
                return Err(LlmError::Cancelled);
            }
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                outcome = self.attempt(http, body.clone(), model, &mut *on_event) => outcome,
            };
            let transient = match outcome {
                Ok(response) => return Ok(response),
                Err(Failure::Fatal(e)) => return Err(e),
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
            TransientKind::StreamCut => LlmError::StreamCut {
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
        on_event: OnEvent<'_>,
    ) -> Result<ModelResponse, Failure> {
        let rb = http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let rb = W::headers(rb, &self.config);
        let mut response = rb.send().await.map_err(|e| self.send_failure(&e))?;
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
            let bytes = read_full(&mut response).await?;
            return W::parse_full(&bytes, on_event);
        }
        let mut state = W::State::new();
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    if state.feed(&bytes, &mut *on_event)? {
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
        state.finish()
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
        Failure::retry(TransientKind::Connect, detail)
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
            }),
            408 | 409 | 425 | 500..=599 => Failure::Retry(Transient {
                kind: TransientKind::Server,
                detail,
                retry_after,
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
            _ if is_context_too_long(&info) => Failure::Fatal(LlmError::ContextTooLong {
                provider,
                detail: message,
            }),
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

async fn read_full(response: &mut reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_FULL_BODY {
                    return Err(Failure::malformed("the reply body is larger than 32 MiB"));
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
