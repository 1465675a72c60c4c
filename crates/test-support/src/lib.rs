//! Mock model servers speaking the Anthropic, OpenAI and Ollama wire formats, with
//! fault injection.
//!
//! A [`MockServer`] is a real HTTP/1.1 server on `127.0.0.1` (std threads, no async
//! runtime) that answers each model request with the next [`Reply`] of a [`Script`],
//! rendered exactly as the real API would: Anthropic Messages SSE events, OpenAI Chat
//! Completions SSE chunks ending in `data: [DONE]`, or Ollama `/api/chat` NDJSON, each
//! streamed or not as the request's `"stream"` field asks. Requests are validated where
//! that is cheap (API key headers, `max_tokens`, tool calls answered by tool results) and
//! rejected with the real error shapes, and every request is recorded for assertions.
//!
//! ```no_run
//! use safe_coder_test_support::{MockServer, Reply, Script, ToolCall, Wire};
//! let server = MockServer::start(
//!     Wire::Anthropic,
//!     Script::new(vec![
//!         Reply::tool_calls(vec![ToolCall::new("read_file", serde_json::json!({"path": "a.txt"}))]),
//!         Reply::text("done"),
//!     ]),
//! ).unwrap();
//! let base_url = server.base_url(); // configure the client with this
//! // ... run the client ...
//! let requests = server.requests();
//! ```
//!
//! When the script is exhausted the server answers HTTP 500 with an API-shaped error
//! whose message says so, so a test that asks for more than it scripted fails clearly.

pub mod firecracker;
mod http;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The wire format a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// Anthropic Messages: `POST /v1/messages`, SSE.
    Anthropic,
    /// OpenAI Chat Completions: `POST /v1/chat/completions`, SSE with `data: [DONE]`.
    OpenAi,
    /// Ollama: `POST /api/chat`, NDJSON.
    Ollama,
    /// OpenAI Responses: `POST /v1/responses`, SSE events (`response.created` ...
    /// `response.completed`), as the Codex CLI speaks it.
    Responses,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Anthropic => "anthropic",
            Wire::OpenAi => "openai",
            Wire::Ollama => "ollama",
            Wire::Responses => "responses",
        }
    }

    /// The path of the model endpoint.
    pub fn api_path(self) -> &'static str {
        match self {
            Wire::Anthropic => "/v1/messages",
            Wire::OpenAi => "/v1/chat/completions",
            Wire::Ollama => "/api/chat",
            Wire::Responses => "/v1/responses",
        }
    }
}

impl FromStr for Wire {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "anthropic" => Ok(Wire::Anthropic),
            "openai" => Ok(Wire::OpenAi),
            "ollama" => Ok(Wire::Ollama),
            "responses" => Ok(Wire::Responses),
            other => Err(format!(
                "unknown wire format `{other}`: use anthropic, openai, ollama or responses"
            )),
        }
    }
}

/// A scripted conversation: one [`Reply`] per model request, in order, plus options
/// that shape how replies are streamed. Loadable from JSON:
///
/// ```json
/// {"replies": [
///    {"type": "tool_calls", "text": "Let me look.", "calls": [{"name": "read_file", "input": {"path": "a"}}]},
///    {"type": "fault", "kind": "rate_limited", "retry_after_secs": 1},
///    {"type": "text", "text": "Done."}
///  ],
///  "noise": true, "chunk_delay_ms": 0, "delta_chars": 8}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub replies: Vec<Reply>,
    /// Interleave `ping` events, SSE comments, unknown event types and empty chunks in
    /// streamed replies; clients must ignore them.
    #[serde(default)]
    pub noise: bool,
    /// Pause between streamed pieces (for UI tests that want to watch text arrive).
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Text and tool-call arguments are split into deltas of at most this many
    /// characters (0 means one delta).
    #[serde(default = "default_delta_chars")]
    pub delta_chars: usize,
    /// The model name echoed in replies; empty means "echo the requested model".
    #[serde(default)]
    pub model: String,
    /// If set, only this API key is accepted (otherwise any non-empty key is).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Opt-in behaviours of real servers that differ from the documented APIs.
    #[serde(default)]
    pub quirks: Quirks,
}

/// Behaviours of real OpenAI-compatible servers and proxies (llama.cpp's server through
/// llama-cpp-python, LiteLLM) that a client must survive; all off by default. See
/// docs/interop.md for where each was seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quirks {
    /// OpenAI: an assistant message whose `content` is `null` or missing is refused
    /// with HTTP 500 "Input should be a valid string" (llama.cpp's server).
    pub reject_null_content: bool,
    /// OpenAI and Anthropic: without `tool_choice` the tools are ignored (the server
    /// treats a missing one as "none"): a scripted tool call comes back as text only.
    pub ignore_tools_without_tool_choice: bool,
    /// OpenAI: a streamed request with tools is answered HTTP 200 with an empty body (a
    /// server-side error after the headers); the same request without streaming gets
    /// the scripted reply. As with uvicorn, the connection is then broken: the next
    /// request sent on it is dropped unanswered.
    pub empty_stream_with_tools: bool,
    /// Anthropic and OpenAI: each tool call is split into one block (or index) per
    /// argument piece, all with the call's id (LiteLLM's `/v1/messages`).
    pub split_tool_calls: bool,
    /// The model's context window: served by OpenAI's `/v1/models` (`context_length`)
    /// and llama.cpp's `/props` (`n_ctx`), and Ollama's `/api/show` (`num_ctx`); a
    /// request whose `max_tokens` plus prompt estimate exceeds it is refused with the
    /// API's context-length error (HTTP 400).
    pub context_window: Option<u64>,
}

fn default_delta_chars() -> usize {
    8
}

impl Default for Script {
    fn default() -> Self {
        Script::new(Vec::new())
    }
}

impl Script {
    pub fn new(replies: Vec<Reply>) -> Self {
        Script {
            replies,
            noise: false,
            chunk_delay_ms: 0,
            delta_chars: default_delta_chars(),
            model: String::new(),
            api_key: None,
            quirks: Quirks::default(),
        }
    }

    /// Parses a script from JSON text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Reads a script from a JSON file.
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Script::from_json(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid script: {e}", path.display()),
            )
        })
    }

    pub fn with_noise(mut self, noise: bool) -> Self {
        self.noise = noise;
        self
    }

    pub fn with_chunk_delay_ms(mut self, ms: u64) -> Self {
        self.chunk_delay_ms = ms;
        self
    }

    pub fn with_delta_chars(mut self, n: usize) -> Self {
        self.delta_chars = n;
        self
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn with_quirks(mut self, quirks: Quirks) -> Self {
        self.quirks = quirks;
        self
    }
}

/// One scripted answer to one model request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A final answer; stop reason `end_turn` (Anthropic) / `stop` (OpenAI, Ollama).
    Text { text: String },
    /// Optional text, then tool calls; stop reason `tool_use` / `tool_calls`. Call ids
    /// are generated (Ollama has none).
    ToolCalls {
        #[serde(default)]
        text: Option<String>,
        calls: Vec<ToolCall>,
    },
    /// Text cut at the output limit: stop reason `max_tokens` (Anthropic) / `length`
    /// (OpenAI, Ollama).
    Truncated { text: String },
    /// Nothing at all: no text, no tool call, zero output tokens, a normal stop.
    Empty,
    /// A failure; it consumes one request like any reply.
    Fault(Fault),
    /// A verbatim HTTP response, for shapes the other variants do not cover.
    Raw {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Text { text: text.into() }
    }

    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        Reply::ToolCalls { text: None, calls }
    }

    pub fn text_and_tool_calls(text: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Reply::ToolCalls {
            text: Some(text.into()),
            calls,
        }
    }

    pub fn fault(fault: Fault) -> Self {
        Reply::Fault(fault)
    }
}

/// A tool call the model makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    #[serde(default)]
    pub input: Value,
    /// Sent verbatim as the arguments instead of `input` (e.g. invalid JSON, to test
    /// that clients survive it). Ollama sends it as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_arguments: Option<String>,
}

impl ToolCall {
    pub fn new(name: impl Into<String>, input: Value) -> Self {
        ToolCall {
            name: name.into(),
            input,
            raw_arguments: None,
        }
    }

    /// A call whose arguments are this verbatim text.
    pub fn raw(name: impl Into<String>, raw_arguments: impl Into<String>) -> Self {
        ToolCall {
            name: name.into(),
            input: Value::Null,
            raw_arguments: Some(raw_arguments.into()),
        }
    }
}

/// An injected failure, in the shape the real API uses for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 429 with `retry-after: N` (and `retry-after-ms` for OpenAI).
    RateLimited { retry_after_secs: u64 },
    /// HTTP 5xx (500, 502, 503, 529...) with the API's error body.
    ServerError { status: u16 },
    /// The stream starts, then an error arrives mid-stream: Anthropic `event: error`
    /// with `overloaded_error`, an OpenAI `data: {"error":...}` chunk, an Ollama
    /// `{"error":...}` line.
    Overloaded,
    /// The stream starts, then the TCP connection is closed without finishing the HTTP
    /// body.
    CutMidStream,
    /// The stream starts, then the HTTP body ends cleanly but without the final event
    /// (`message_stop`, `[DONE]`, `done: true`).
    TruncatedStream,
    /// A streamed event (or a non-streamed body) that is not valid JSON.
    MalformedJson,
    /// HTTP 401, the API's "invalid API key" error.
    Unauthorized,
    /// HTTP 403, the API's permission error.
    Forbidden,
    /// HTTP 404, the API's "unknown model" error.
    NotFoundModel,
    /// The stream starts, then nothing more is sent until the client goes away.
    Stall,
    /// The headers are sent, then nothing at all until the client goes away.
    StallAfterHeaders,
    /// The stream starts, then only keep-alives (SSE comments and Anthropic `ping`
    /// events, blank NDJSON lines) every 20 ms, forever.
    KeepAliveOnly,
    /// The stream starts, then text deltas every `interval_ms` (0: as fast as the
    /// connection takes them) forever, never the final event.
    Endless {
        #[serde(default)]
        interval_ms: u64,
    },
}

/// One request as the server received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON; `Value::Null` when empty, a `Value::String` when it is
    /// not JSON.
    pub body: Value,
    /// When the whole request had arrived, in microseconds since the server started.
    #[serde(default)]
    pub received_us: u64,
    /// When the whole response had been written (0 while it is being written), in
    /// microseconds since the server started. Benchmarks measure the client's time per
    /// turn as the next request's `received_us` minus this.
    #[serde(default)]
    pub responded_us: u64,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The tool results in this request's conversation, in order, whatever the wire:
    /// Anthropic `tool_result` blocks, OpenAI and Ollama `role: "tool"` messages.
    pub fn tool_results(&self) -> Vec<SeenToolResult> {
        let mut out = Vec::new();
        let messages = self
            .body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
            _ => String::new(),
        };
        let field = |v: &Value, key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        for m in messages {
            if let Some(blocks) = m.get("content").and_then(Value::as_array) {
                for b in blocks {
                    if b.get("type").and_then(Value::as_str) == Some("tool_result") {
                        out.push(SeenToolResult {
                            id: field(b, "tool_use_id"),
                            name: String::new(),
                            content: text(b.get("content")),
                            is_error: b.get("is_error").and_then(Value::as_bool) == Some(true),
                        });
                    }
                }
            }
            if m.get("role").and_then(Value::as_str) == Some("tool") {
                let content = text(m.get("content"));
                out.push(SeenToolResult {
                    id: field(m, "tool_call_id"),
                    name: field(m, "tool_name"),
                    is_error: content.starts_with("Error"),
                    content,
                });
            }
        }
        out
    }
}

/// A tool result as a server received it (see [`RecordedRequest::tool_results`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenToolResult {
    /// `tool_use_id` / `tool_call_id`; empty for Ollama.
    pub id: String,
    /// Ollama's `tool_name`; empty elsewhere.
    pub name: String,
    pub content: String,
    /// Anthropic's `is_error`; for OpenAI and Ollama, which have no such flag, whether
    /// the content starts with "Error" (how Safe Coder's client marks failures).
    pub is_error: bool,
}

pub(crate) struct State {
    pub wire: Wire,
    pub script: Script,
    pub replies: Mutex<VecDeque<Reply>>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub stop: AtomicBool,
    /// Open connections, so that stopping the server closes them.
    pub conns: Mutex<HashMap<u64, TcpStream>>,
    pub next_id: AtomicU64,
    /// Counts model requests answered (for generated ids).
    pub served: AtomicU64,
    /// The clock of `RecordedRequest::received_us` / `responded_us`.
    pub started: std::time::Instant,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock server; it stops (and closes its connections) when dropped.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Starts a server on `127.0.0.1` at a free port.
    pub fn start(wire: Wire, script: Script) -> io::Result<MockServer> {
        MockServer::start_on(wire, script, 0)
    }

    /// Starts a server on `127.0.0.1:port` (0 picks a free port).
    pub fn start_on(wire: Wire, script: Script, port: u16) -> io::Result<MockServer> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            wire,
            replies: Mutex::new(script.replies.iter().cloned().collect()),
            script,
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            served: AtomicU64::new(0),
            started: std::time::Instant::now(),
        });
        let accept_state = state.clone();
        let accept = std::thread::Builder::new()
            .name("mock-model-accept".into())
            .spawn(move || accept_loop(listener, accept_state))?;
        Ok(MockServer {
            addr,
            state,
            accept: Some(accept),
        })
    }

    pub fn wire(&self) -> Wire {
        self.state.wire
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What a user would configure as the base URL: Anthropic
    /// `http://127.0.0.1:PORT`, OpenAI `http://127.0.0.1:PORT/v1`, Ollama
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        match self.state.wire {
            Wire::OpenAi | Wire::Responses => format!("http://{}/v1", self.addr),
            Wire::Anthropic | Wire::Ollama => format!("http://{}", self.addr),
        }
    }

    /// Every request received so far, in order (model requests and others).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Only the requests to the model endpoint.
    pub fn model_requests(&self) -> Vec<RecordedRequest> {
        let path = self.state.wire.api_path();
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// TCP connections accepted so far (a pooling client keeps this at 1).
    pub fn connections(&self) -> u64 {
        self.state.next_id.load(Ordering::Relaxed)
    }

    /// Replies not yet consumed.
    pub fn remaining(&self) -> usize {
        lock(&self.state.replies).len()
    }

    /// Appends replies to the script while the server runs.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.replies).extend(replies);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for (_, conn) in lock(&self.state.conns).drain() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let _ = stream.set_nodelay(true);
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&state.conns).insert(id, clone);
        }
        let conn_state = state.clone();
        let spawned = std::thread::Builder::new()
            .name("mock-model-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &conn_state);
                lock(&conn_state.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&state.conns).remove(&id);
        }
    }
}

fn serve_connection(stream: TcpStream, state: &State) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let delay = Duration::from_millis(state.script.chunk_delay_ms);
    loop {
        let Some(req) = http::read_request(&mut reader)? else {
            return Ok(());
        };
        if state.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let close = req.wants_close();
        let received_us = state.started.elapsed().as_micros() as u64;
        let (response, index) = wire::respond(state, &req, received_us);
        // The empty streamed 200 of `empty_stream_with_tools` leaves the connection
        // broken, as uvicorn does after an error inside a stream: the next request on
        // it is read and dropped unanswered.
        let broken = state.script.quirks.empty_stream_with_tools
            && matches!(&response, http::Response::Stream { pieces, end: http::StreamEnd::Complete, .. } if pieces.is_empty());
        let written = http::write_response(&mut writer, response, delay, &state.stop);
        let responded_us = state.started.elapsed().as_micros() as u64;
        if let Some(r) = lock(&state.requests).get_mut(index) {
            r.responded_us = responded_us;
        }
        let after = written?;
        if close || after == http::After::Close {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if broken {
            let _ = http::read_request(&mut reader);
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}
