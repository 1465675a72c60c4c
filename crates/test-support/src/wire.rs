//! Rendering scripted replies in each wire format, request validation with the real
//! error shapes, and routing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::http::{Request, Response, StreamEnd};
use crate::{lock, Fault, RecordedRequest, Reply, State, ToolCall, Wire};

const DEFAULT_MODEL: &str = "mock-model";
/// The text of replies that fail part-way: a client must never present it as an answer.
const PARTIAL_TEXT: &str = "This partial answer must never be taken as complete.";

/// Records, validates, routes and answers one request. The request is recorded before
/// the answer is written, so a client never sees an answer to an unrecorded request.
pub(crate) fn respond(state: &State, req: &Request, received_us: u64) -> (Response, usize) {
    let body = parse_body(&req.body);
    let response = route(state, req, &body);
    let mut requests = lock(&state.requests);
    requests.push(RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        body,
        received_us,
        responded_us: 0,
    });
    (response, requests.len() - 1)
}

fn route(state: &State, req: &Request, body: &Value) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    let wire = state.wire;
    match (wire, req.method.as_str(), path) {
        (Wire::Anthropic, "POST", "/v1/messages")
        | (Wire::OpenAi, "POST", "/v1/chat/completions")
        | (Wire::Ollama, "POST", "/api/chat")
        | (Wire::Responses, "POST", "/v1/responses") => model_request(state, req, body),
        (Wire::Anthropic, "GET", "/v1/models")
        | (Wire::OpenAi | Wire::Responses, "GET", "/v1/models")
        | (Wire::Ollama, "GET", "/api/tags") => models(state),
        (Wire::Ollama, "GET", "/api/version") => json_response(200, &json!({"version": "0.12.0"})),
        (Wire::OpenAi, "GET", "/props") if state.script.quirks.context_window.is_some() => {
            let n = state.script.quirks.context_window.unwrap_or_default();
            json_response(
                200,
                &json!({"default_generation_settings": {"n_ctx": n}, "total_slots": 1}),
            )
        }
        (Wire::Ollama, "POST", "/api/show") => match state.script.quirks.context_window {
            Some(n) => json_response(
                200,
                &json!({"parameters": format!("num_ctx {n}\nstop \"<|im_end|>\""),
                        "model_info": {"general.architecture": "llama",
                                       "llama.context_length": 131_072},
                        "capabilities": ["completion", "tools"]}),
            ),
            None => ollama_error(404, "model not found"),
        },
        (Wire::Ollama, "GET" | "HEAD", "/") => Response::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: b"Ollama is running".to_vec(),
            cut_at: None,
        },
        (Wire::Anthropic, _, _) => {
            anthropic_error(404, "not_found_error", &format!("Not found: {path}"))
        }
        (Wire::OpenAi | Wire::Responses, method, _) => openai_error(
            404,
            &format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
            None,
        ),
        (Wire::Ollama, _, _) => Response::Full {
            status: 404,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"404 page not found".to_vec(),
            cut_at: None,
        },
    }
}

fn parse_body(raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
}

fn model_name(state: &State, body: &Value) -> String {
    if !state.script.model.is_empty() {
        return state.script.model.clone();
    }
    body.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(DEFAULT_MODEL)
        .to_string()
}

fn models(state: &State) -> Response {
    let model = if state.script.model.is_empty() {
        DEFAULT_MODEL
    } else {
        state.script.model.as_str()
    };
    let body = match state.wire {
        Wire::Anthropic => json!({
            "data": [{"type": "model", "id": model, "display_name": model,
                      "created_at": "2025-01-01T00:00:00Z"}],
            "has_more": false, "first_id": model, "last_id": model
        }),
        Wire::OpenAi | Wire::Responses => {
            let mut entry = json!({"id": model, "object": "model", "created": 1_735_689_600,
                                   "owned_by": "mock"});
            if let Some(n) = state.script.quirks.context_window {
                entry["context_length"] = json!(n);
            }
            json!({"object": "list", "data": [entry]})
        }
        Wire::Ollama => json!({
            "models": [{"name": model, "model": model, "modified_at": "2025-01-01T00:00:00Z",
                        "size": 0, "digest": "0000", "details": {"format": "gguf"}}]
        }),
    };
    json_response(200, &body)
}

fn model_request(state: &State, req: &Request, body: &Value) -> Response {
    if let Some(rejection) = validate(state, req, body) {
        return rejection;
    }
    let quirks = &state.script.quirks;
    let has_tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let streamed = match state.wire {
        Wire::Anthropic | Wire::OpenAi | Wire::Responses => {
            body.get("stream").and_then(Value::as_bool) == Some(true)
        }
        Wire::Ollama => body.get("stream").and_then(Value::as_bool) != Some(false),
    };
    if state.wire == Wire::OpenAi {
        if quirks.reject_null_content {
            if let Some(i) = null_content(body) {
                return openai_error(
                    500,
                    &format!("1 validation error for ChatCompletionRequestAssistantMessage\nmessages.{i}.content\n  Input should be a valid string [type=string_type, input_value=None, input_type=NoneType]"),
                    "internal_server_error",
                    None,
                    None,
                );
            }
        }
        if quirks.empty_stream_with_tools && streamed && has_tools {
            // The reply is not consumed: the request failed on the server.
            return Response::Stream {
                headers: stream_headers(Wire::OpenAi),
                pieces: Vec::new(),
                end: StreamEnd::Complete,
            };
        }
    }
    if let Some(window) = quirks.context_window {
        let asked = body
            .get("max_tokens")
            .or_else(|| body.get("max_completion_tokens"))
            .or_else(|| body.get("max_output_tokens"))
            .or_else(|| body.pointer("/options/num_predict"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let prompt = (req.body.len() as u64 / 4).max(1);
        if prompt + asked > window {
            let msg = format!("This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt} in the messages, {asked} in the completion). Please reduce the length of the messages or completion.", prompt + asked);
            return match state.wire {
                Wire::Anthropic => anthropic_error(
                    400,
                    "invalid_request_error",
                    &format!(
                        "prompt is too long: {} tokens > {window} maximum",
                        prompt + asked
                    ),
                ),
                Wire::OpenAi | Wire::Responses => openai_error(
                    400,
                    &msg,
                    "invalid_request_error",
                    Some("messages"),
                    Some("context_length_exceeded"),
                ),
                Wire::Ollama => ollama_error(400, &msg),
            };
        }
    }
    let Some(reply) = lock(&state.replies).pop_front() else {
        let n = state.served.load(Ordering::Relaxed) + 1;
        let msg = format!(
            "mock script exhausted: model request {n} has no scripted reply (the script had {})",
            state.script.replies.len()
        );
        return match state.wire {
            Wire::Anthropic => anthropic_error(500, "api_error", &msg),
            Wire::OpenAi | Wire::Responses => openai_error(500, &msg, "server_error", None, None),
            Wire::Ollama => ollama_error(500, &msg),
        };
    };
    let n = state.served.fetch_add(1, Ordering::Relaxed) + 1;
    // Anthropic and OpenAI default to a single JSON body, Ollama to streaming.
    let stream = streamed;
    let tool_choice = body.get("tool_choice").filter(|c| !c.is_null());
    let tools_ignored = quirks.ignore_tools_without_tool_choice
        && (tool_choice.is_none()
            || tool_choice.and_then(Value::as_str) == Some("none")
            || tool_choice
                .and_then(|c| c.get("type"))
                .and_then(Value::as_str)
                == Some("none"));
    let reply = match reply {
        Reply::ToolCalls { text, .. } if tools_ignored => Reply::Text {
            text: text.unwrap_or_else(|| "I would call a tool, but none was offered.".into()),
        },
        other => other,
    };
    let ctx = Ctx {
        wire: state.wire,
        model: model_name(state, body),
        stream,
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
        input_tokens: (req.body.len() as u64 / 4).max(1),
        n,
        noise: state.script.noise,
        delta_chars: state.script.delta_chars,
        split_calls: quirks.split_tool_calls,
    };
    render(&ctx, &reply)
}

/// The index of the first assistant message whose `content` is `null` or missing.
fn null_content(body: &Value) -> Option<usize> {
    body.get("messages")?.as_array()?.iter().position(|m| {
        m.get("role").and_then(Value::as_str) == Some("assistant")
            && m.get("content").is_none_or(Value::is_null)
    })
}

// ---------------------------------------------------------------------------------------
// Validation with the real APIs' error shapes.

fn validate(state: &State, req: &Request, body: &Value) -> Option<Response> {
    match state.wire {
        Wire::Anthropic => validate_anthropic(state, req, body),
        Wire::OpenAi => validate_openai(state, req, body),
        Wire::Responses => validate_responses(state, req, body),
        Wire::Ollama => validate_ollama(state, req, body),
    }
}

fn validate_anthropic(state: &State, req: &Request, body: &Value) -> Option<Response> {
    let invalid = |msg: &str| Some(anthropic_error(400, "invalid_request_error", msg));
    match req.header("x-api-key").filter(|k| !k.is_empty()) {
        None => {
            return Some(anthropic_error(
                401,
                "authentication_error",
                "x-api-key header is required",
            ))
        }
        Some(key) => {
            if state
                .script
                .api_key
                .as_deref()
                .is_some_and(|want| want != key)
            {
                return Some(anthropic_error(
                    401,
                    "authentication_error",
                    "invalid x-api-key",
                ));
            }
        }
    }
    if req.header("anthropic-version").is_none() {
        return invalid("anthropic-version: header is required");
    }
    let Some(obj) = body.as_object() else {
        return invalid("There was an error parsing the body: expected a JSON object");
    };
    if !obj.get("model").is_some_and(Value::is_string) {
        return invalid("model: Field required");
    }
    if !obj.get("max_tokens").is_some_and(Value::is_u64) {
        return invalid("max_tokens: Field required");
    }
    if let Some(system) = obj.get("system") {
        if !(system.is_string() || system.is_array()) {
            return invalid("system: Input should be a valid string or list");
        }
    }
    if let Some(tools) = obj.get("tools") {
        let Some(tools) = tools.as_array() else {
            return invalid("tools: Input should be a valid list");
        };
        for (i, tool) in tools.iter().enumerate() {
            if !tool.get("name").is_some_and(Value::is_string) {
                return invalid(&format!("tools.{i}.custom.name: Field required"));
            }
            if !tool.get("input_schema").is_some_and(Value::is_object) {
                return invalid(&format!("tools.{i}.custom.input_schema: Field required"));
            }
        }
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        return invalid("messages: Field required");
    };
    if messages.is_empty() {
        return invalid("messages: at least one message is required");
    }
    let mut pending: Vec<String> = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return invalid(&format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if i == 0 && role != "user" {
            return invalid("messages: first message must use the \"user\" role");
        }
        let blocks: Vec<&Value> = match msg.get("content") {
            Some(Value::String(_)) => Vec::new(),
            Some(Value::Array(blocks)) => blocks.iter().collect(),
            _ => return invalid(&format!("messages.{i}.content: Field required")),
        };
        let results: Vec<String> = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .filter_map(|b| b.get("tool_use_id").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        if !pending.is_empty() {
            let missing: Vec<&str> = pending
                .iter()
                .filter(|id| role != "user" || !results.contains(id))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return invalid(&format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    missing.join(", ")
                ));
            }
        }
        if let Some(stray) = results.iter().find(|id| !pending.contains(id)) {
            return invalid(&format!(
                "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {stray}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            ));
        }
        pending = if role == "assistant" {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
                .filter_map(|b| b.get("id").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        for (k, id) in pending.iter().enumerate() {
            if pending[..k].contains(id) {
                return invalid(&format!(
                    "messages.{i}.content.{k}: `tool_use` ids must be unique"
                ));
            }
        }
    }
    None
}

fn validate_openai(state: &State, req: &Request, body: &Value) -> Option<Response> {
    let key = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match key {
        None => {
            return Some(openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                None,
            ))
        }
        Some(key) => {
            if state.script.api_key.as_deref().is_some_and(|want| want != key) {
                return Some(openai_unauthorized(key));
            }
        }
    }
    let invalid = |msg: &str, param: Option<&str>, code: Option<&str>| {
        Some(openai_error(400, msg, "invalid_request_error", param, code))
    };
    let Some(obj) = body.as_object() else {
        return invalid(
            "We could not parse the JSON body of your request.",
            None,
            None,
        );
    };
    if !obj.get("model").is_some_and(Value::is_string) {
        return invalid("you must provide a model parameter", None, None);
    }
    if let Some(tools) = obj.get("tools") {
        let Some(tools) = tools.as_array() else {
            return invalid(
                "Invalid type for 'tools': expected an array.",
                Some("tools"),
                None,
            );
        };
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("type").and_then(Value::as_str) != Some("function")
                || !tool.pointer("/function/name").is_some_and(Value::is_string)
            {
                return invalid(
                    &format!("Missing required parameter: 'tools[{i}].function'."),
                    Some(&format!("tools[{i}].function")),
                    Some("missing_required_parameter"),
                );
            }
        }
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        return invalid(
            "Missing required parameter: 'messages'.",
            Some("messages"),
            Some("missing_required_parameter"),
        );
    };
    if messages.is_empty() {
        return invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
            Some("empty_array"),
        );
    }
    let mut pending: Vec<String> = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            return invalid(
                &format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
                Some(&format!("messages[{i}].role")),
                Some("invalid_value"),
            );
        }
        if role == "tool" {
            let id = msg
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(pos) = pending.iter().position(|p| p == id) {
                pending.remove(pos);
                continue;
            }
            return invalid(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                Some(&format!("messages.[{i}].role")),
                None,
            );
        }
        if !pending.is_empty() {
            return invalid(
                &format!("An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}", pending.join(", ")),
                Some(&format!("messages.[{i}].role")),
                None,
            );
        }
        if role == "assistant" {
            if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    if !call
                        .pointer("/function/arguments")
                        .is_some_and(Value::is_string)
                    {
                        return invalid(
                            &format!("Invalid type for 'messages[{i}].tool_calls.function.arguments': expected a string."),
                            Some(&format!("messages[{i}].tool_calls")),
                            Some("invalid_type"),
                        );
                    }
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        pending.push(id.to_string());
                    }
                }
            }
        }
    }
    if !pending.is_empty() {
        return invalid(
            &format!("An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}", pending.join(", ")),
            Some("messages"),
            None,
        );
    }
    None
}

/// The Responses API: a Bearer key, a model, `input` as text or items, tools with a
/// `type` (function tools flat, with a `name`), and every `function_call_output` answering
/// a `function_call` earlier in `input` (the client keeps the history: `store` false).
fn validate_responses(state: &State, req: &Request, body: &Value) -> Option<Response> {
    let key = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match key {
        None => {
            return Some(openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                None,
            ))
        }
        Some(key) if state.script.api_key.as_deref().is_some_and(|want| want != key) => {
            return Some(openai_unauthorized(key))
        }
        Some(_) => {}
    }
    let invalid = |msg: &str, param: Option<&str>| {
        Some(openai_error(400, msg, "invalid_request_error", param, None))
    };
    let Some(obj) = body.as_object() else {
        return invalid("We could not parse the JSON body of your request.", None);
    };
    if !obj.get("model").is_some_and(Value::is_string) {
        return invalid("Missing required parameter: 'model'.", Some("model"));
    }
    if let Some(tools) = obj.get("tools") {
        let Some(tools) = tools.as_array() else {
            return invalid(
                "Invalid type for 'tools': expected an array.",
                Some("tools"),
            );
        };
        for (i, tool) in tools.iter().enumerate() {
            match tool.get("type").and_then(Value::as_str) {
                None => {
                    return invalid(
                        &format!("Missing required parameter: 'tools[{i}].type'."),
                        Some(&format!("tools[{i}].type")),
                    )
                }
                Some("function") if !tool.get("name").is_some_and(Value::is_string) => {
                    return invalid(
                        &format!("Missing required parameter: 'tools[{i}].name'."),
                        Some(&format!("tools[{i}].name")),
                    )
                }
                Some(_) => {}
            }
        }
    }
    match obj.get("input") {
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) => {
            let mut calls = std::collections::HashSet::new();
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some("function_call") => {
                        if let Some(id) = item.get("call_id").and_then(Value::as_str) {
                            calls.insert(id.to_string());
                        }
                    }
                    Some("function_call_output") => {
                        let id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
                        if !calls.contains(id) {
                            return invalid(
                                &format!("No tool call found for function call output with call_id {id}."),
                                Some("input"),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => return invalid("Missing required parameter: 'input'.", Some("input")),
    }
    None
}

fn validate_ollama(state: &State, req: &Request, body: &Value) -> Option<Response> {
    if let Some(want) = &state.script.api_key {
        let got = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        if got != Some(want.as_str()) {
            return Some(ollama_error(401, "unauthorized"));
        }
    }
    let Some(obj) = body.as_object() else {
        return Some(ollama_error(
            400,
            "invalid character looking for beginning of value",
        ));
    };
    if obj
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Some(ollama_error(400, "model is required"));
    }
    if let Some(messages) = obj.get("messages") {
        let Some(messages) = messages.as_array() else {
            return Some(ollama_error(
                400,
                "json: cannot unmarshal object into Go struct field ChatRequest.messages of type []api.Message",
            ));
        };
        for msg in messages {
            let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
            if !["system", "user", "assistant", "tool"].contains(&role) {
                return Some(ollama_error(400, &format!("invalid role: {role}")));
            }
            if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    if !call
                        .pointer("/function/arguments")
                        .is_some_and(Value::is_object)
                    {
                        return Some(ollama_error(
                            400,
                            "json: cannot unmarshal string into Go struct field ToolCallFunction.messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments",
                        ));
                    }
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Error responses.

fn json_response(status: u16, body: &Value) -> Response {
    Response::Full {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
        cut_at: None,
    }
}

fn with_header(mut response: Response, name: &str, value: String) -> Response {
    match &mut response {
        Response::Full { headers, .. }
        | Response::Stream { headers, .. }
        | Response::Endless { headers, .. } => {
            headers.push((name.to_string(), value));
        }
    }
    response
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    with_header(
        json_response(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": message},
                    "request_id": "req_mock"}),
        ),
        "request-id",
        "req_mock".into(),
    )
}

fn openai_error(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn openai_unauthorized(key: &str) -> Response {
    let shown: String = key.chars().take(6).collect();
    openai_error(
        401,
        &format!("Incorrect API key provided: {shown}****. You can find your API key at https://platform.openai.com/account/api-keys."),
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    )
}

fn ollama_error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

// ---------------------------------------------------------------------------------------
// Rendering replies.

struct Ctx {
    wire: Wire,
    model: String,
    stream: bool,
    include_usage: bool,
    input_tokens: u64,
    /// 1-based index of the model request served, for ids.
    n: u64,
    noise: bool,
    delta_chars: usize,
    /// [`crate::Quirks::split_tool_calls`].
    split_calls: bool,
}

/// A reply reduced to what every wire format needs.
struct Plan<'a> {
    text: Option<&'a str>,
    calls: &'a [ToolCall],
    /// Cut at the output limit.
    truncated: bool,
}

impl Plan<'_> {
    fn output_tokens(&self) -> u64 {
        if self.text.is_none() && self.calls.is_empty() {
            return 0;
        }
        let args: usize = self.calls.iter().map(|c| arguments(c).len()).sum();
        (self.text.map_or(0, str::len) + args) as u64 / 4 + 1
    }

    /// Anthropic's stop reason.
    fn anthropic_stop(&self) -> &'static str {
        if self.truncated {
            "max_tokens"
        } else if self.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        }
    }

    /// OpenAI's `finish_reason` (Ollama's `done_reason` is `stop` or `length`).
    fn openai_finish(&self) -> &'static str {
        if self.truncated {
            "length"
        } else if self.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
    }
}

/// The arguments of a call as the JSON text the APIs send.
fn arguments(call: &ToolCall) -> String {
    match &call.raw_arguments {
        Some(raw) => raw.clone(),
        None if call.input.is_null() => "{}".to_string(),
        None => call.input.to_string(),
    }
}

fn split(text: &str, max_chars: usize) -> Vec<&str> {
    if max_chars == 0 || text.is_empty() {
        return vec![text];
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (i, _) in text.char_indices() {
        if count == max_chars {
            out.push(&text[start..i]);
            start = i;
            count = 0;
        }
        count += 1;
    }
    out.push(&text[start..]);
    out
}

fn render(ctx: &Ctx, reply: &Reply) -> Response {
    match reply {
        Reply::Text { text } => render_plan(
            ctx,
            &Plan {
                text: Some(text),
                calls: &[],
                truncated: false,
            },
        ),
        Reply::Truncated { text } => render_plan(
            ctx,
            &Plan {
                text: Some(text),
                calls: &[],
                truncated: true,
            },
        ),
        Reply::Empty => render_plan(
            ctx,
            &Plan {
                text: None,
                calls: &[],
                truncated: false,
            },
        ),
        Reply::ToolCalls { text, calls } => render_plan(
            ctx,
            &Plan {
                text: text.as_deref(),
                calls,
                truncated: false,
            },
        ),
        Reply::Raw {
            status,
            headers,
            body,
        } => Response::Full {
            status: *status,
            headers: headers.clone(),
            body: body.clone().into_bytes(),
            cut_at: None,
        },
        Reply::Fault(fault) => render_fault(ctx, fault),
    }
}

fn render_plan(ctx: &Ctx, plan: &Plan) -> Response {
    if ctx.stream {
        Response::Stream {
            headers: stream_headers(ctx.wire),
            pieces: stream_pieces(ctx, plan),
            end: StreamEnd::Complete,
        }
    } else {
        json_response(200, &full_body(ctx, plan))
    }
}

fn stream_headers(wire: Wire) -> Vec<(String, String)> {
    match wire {
        Wire::Anthropic => vec![
            (
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            ),
            ("cache-control".into(), "no-cache".into()),
            ("request-id".into(), "req_mock".into()),
        ],
        Wire::OpenAi => vec![
            (
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            ),
            ("cache-control".into(), "no-cache".into()),
            ("x-request-id".into(), "req_mock".into()),
        ],
        Wire::Ollama => vec![("content-type".into(), "application/x-ndjson".into())],
        Wire::Responses => vec![
            (
                "content-type".into(),
                "text/event-stream; charset=utf-8".into(),
            ),
            ("cache-control".into(), "no-cache".into()),
            ("x-request-id".into(), "req_mock".into()),
        ],
    }
}

fn stream_pieces(ctx: &Ctx, plan: &Plan) -> Vec<Vec<u8>> {
    match ctx.wire {
        Wire::Anthropic => anthropic_stream(ctx, plan),
        Wire::OpenAi => openai_stream(ctx, plan),
        Wire::Ollama => ollama_stream(ctx, plan),
        Wire::Responses => responses_stream(ctx, plan),
    }
}

fn sse(event: &str, data: &Value) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

fn sse_data(data: &Value) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

fn ndjson(line: &Value) -> Vec<u8> {
    let mut out = line.to_string().into_bytes();
    out.push(b'\n');
    out
}

fn anthropic_tool_id(n: u64, i: usize) -> String {
    format!("toolu_01Mock{n:04}x{i:02}")
}

fn anthropic_stream(ctx: &Ctx, plan: &Plan) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    out.push(sse(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_01Mock{:04}", ctx.n), "type": "message", "role": "assistant",
            "model": ctx.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": ctx.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    ));
    if ctx.noise {
        out.push(sse("ping", &json!({"type": "ping"})));
        out.push(b": keep-alive comment\n\n".to_vec());
    }
    let mut index = 0;
    if let Some(text) = plan.text {
        out.push(sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}}),
        ));
        for (k, piece) in split(text, ctx.delta_chars).into_iter().enumerate() {
            out.push(sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}),
            ));
            if ctx.noise && k == 0 {
                out.push(sse(
                    "mock_unknown_event",
                    &json!({"type": "mock_unknown_event", "note": "clients must ignore unknown events"}),
                ));
                out.push(sse("ping", &json!({"type": "ping"})));
            }
        }
        out.push(sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    for (i, call) in plan.calls.iter().enumerate() {
        if ctx.split_calls {
            // LiteLLM: one tool_use block per argument piece, all with one id.
            for piece in split(&arguments(call), ctx.delta_chars) {
                out.push(sse(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": anthropic_tool_id(ctx.n, i),
                                              "name": call.name, "input": {}}}),
                ));
                out.push(sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
                out.push(sse(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}),
                ));
                index += 1;
            }
            continue;
        }
        out.push(sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": anthropic_tool_id(ctx.n, i),
                                      "name": call.name, "input": {}}}),
        ));
        out.push(sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ));
        let args = arguments(call);
        for piece in split(&args, ctx.delta_chars) {
            out.push(sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
            if ctx.noise {
                out.push(sse("ping", &json!({"type": "ping"})));
            }
        }
        out.push(sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    let stop = plan.anthropic_stop();
    out.push(sse(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": plan.output_tokens()}}),
    ));
    out.push(sse("message_stop", &json!({"type": "message_stop"})));
    out
}

fn openai_tool_id(n: u64, i: usize) -> String {
    format!("call_Mock{n:04}x{i:02}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn openai_stream(ctx: &Ctx, plan: &Plan) -> Vec<Vec<u8>> {
    let id = format!("chatcmpl-Mock{:04}", ctx.n);
    let created = unix_now();
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": ctx.model, "system_fingerprint": "fp_mock",
                           "choices": [{"index": 0, "delta": delta, "logprobs": null,
                                        "finish_reason": finish}]});
        if ctx.include_usage {
            // With `include_usage` every chunk carries `"usage": null` but the last.
            v["usage"] = Value::Null;
        }
        sse_data(&v)
    };
    let mut out = Vec::new();
    out.push(chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ));
    if ctx.noise {
        out.push(b": OPENROUTER PROCESSING\n\n".to_vec());
        out.push(sse_data(
            &json!({"id": id, "object": "chat.completion.chunk",
                                  "created": created, "model": ctx.model, "choices": [],
                                  "mock_unknown_field": {"note": "ignore me"}}),
        ));
    }
    if let Some(text) = plan.text {
        for piece in split(text, ctx.delta_chars) {
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
    }
    let mut next_index = 0;
    for (i, call) in plan.calls.iter().enumerate() {
        if ctx.split_calls {
            // One index per argument piece, all with the call's id.
            for piece in split(&arguments(call), ctx.delta_chars) {
                out.push(chunk(
                    json!({"tool_calls": [{"index": next_index, "id": openai_tool_id(ctx.n, i),
                                           "type": "function",
                                           "function": {"name": call.name, "arguments": piece}}]}),
                    Value::Null,
                ));
                next_index += 1;
            }
            continue;
        }
        let i_wire = next_index;
        next_index += 1;
        out.push(chunk(
            json!({"tool_calls": [{"index": i_wire, "id": openai_tool_id(ctx.n, i), "type": "function",
                                   "function": {"name": call.name, "arguments": ""}}]}),
            Value::Null,
        ));
        let args = arguments(call);
        for piece in split(&args, ctx.delta_chars) {
            out.push(chunk(
                json!({"tool_calls": [{"index": i_wire, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
            if ctx.noise {
                out.push(b": keep-alive\n\n".to_vec());
            }
        }
    }
    let finish = plan.openai_finish();
    out.push(chunk(json!({}), json!(finish)));
    if ctx.include_usage {
        let completion = plan.output_tokens();
        out.push(sse_data(
            &json!({"id": id, "object": "chat.completion.chunk",
            "created": created, "model": ctx.model, "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": {"prompt_tokens": ctx.input_tokens, "completion_tokens": completion,
                      "total_tokens": ctx.input_tokens + completion}}),
        ));
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

fn responses_item_id(kind: &str, n: u64, i: usize) -> String {
    format!("{kind}_Mock{n:04}x{i:02}")
}

/// A Responses API `response` object with `status` and the plan's output items.
fn responses_object(ctx: &Ctx, plan: &Plan, status: &str) -> Value {
    let output_tokens = plan.output_tokens();
    let mut v = json!({"id": format!("resp_Mock{:04}", ctx.n), "object": "response",
        "created_at": unix_now(), "status": status, "error": null,
        "incomplete_details": null, "instructions": null, "max_output_tokens": null,
        "model": ctx.model, "output": responses_items(ctx, plan),
        "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "store": false,
        "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": ctx.input_tokens,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": output_tokens,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": ctx.input_tokens + output_tokens},
        "user": null, "metadata": {}});
    if status == "incomplete" {
        v["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    if status == "in_progress" {
        v["output"] = json!([]);
        v["usage"] = Value::Null;
    }
    v
}

/// A failed `response` object (for `response.failed`).
fn responses_failed(ctx: &Ctx, code: &str, message: &str) -> Value {
    json!({"id": format!("resp_Mock{:04}", ctx.n), "object": "response",
           "created_at": unix_now(), "status": "failed",
           "error": {"code": code, "message": message},
           "incomplete_details": null, "model": ctx.model, "output": [], "usage": null})
}

/// The output items of a finished reply: a message, then one item per function call.
fn responses_items(ctx: &Ctx, plan: &Plan) -> Vec<Value> {
    let mut items = Vec::new();
    if let Some(text) = plan.text {
        items.push(
            json!({"id": responses_item_id("msg", ctx.n, 0), "type": "message",
            "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}),
        );
    }
    for (i, call) in plan.calls.iter().enumerate() {
        items.push(
            json!({"id": responses_item_id("fc", ctx.n, i), "type": "function_call",
            "status": "completed", "name": call.name, "call_id": openai_tool_id(ctx.n, i),
            "arguments": arguments(call)}),
        );
    }
    items
}

/// The SSE events of a streamed Responses API reply, each with its `sequence_number`.
fn responses_stream(ctx: &Ctx, plan: &Plan) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut event = |out: &mut Vec<Vec<u8>>, kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        out.push(sse(kind, &data));
    };
    let started = responses_object(ctx, plan, "in_progress");
    event(&mut out, "response.created", json!({"response": started}));
    event(
        &mut out,
        "response.in_progress",
        json!({"response": started}),
    );
    if ctx.noise {
        out.push(b": keep-alive\n\n".to_vec());
        out.push(sse(
            "response.mock_unknown_event",
            &json!({"type": "response.mock_unknown_event", "note": "ignore me"}),
        ));
    }
    let items = responses_items(ctx, plan);
    let mut index = 0usize;
    if let Some(text) = plan.text {
        let item = &items[0];
        let id = item["id"].clone();
        let mut open = item.clone();
        open["status"] = json!("in_progress");
        open["content"] = json!([]);
        event(
            &mut out,
            "response.output_item.added",
            json!({"output_index": index, "item": open}),
        );
        event(
            &mut out,
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                     "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for piece in split(text, ctx.delta_chars) {
            event(
                &mut out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                         "delta": piece, "logprobs": []}),
            );
        }
        event(
            &mut out,
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                     "text": text, "logprobs": []}),
        );
        event(
            &mut out,
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                     "part": {"type": "output_text", "text": text, "annotations": []}}),
        );
        event(
            &mut out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        index += 1;
    }
    for item in items.iter().filter(|i| i["type"] == "function_call") {
        let id = item["id"].clone();
        let args = item["arguments"].as_str().unwrap_or("").to_string();
        let mut open = item.clone();
        open["status"] = json!("in_progress");
        open["arguments"] = json!("");
        event(
            &mut out,
            "response.output_item.added",
            json!({"output_index": index, "item": open}),
        );
        for piece in split(&args, ctx.delta_chars) {
            event(
                &mut out,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": piece}),
            );
        }
        event(
            &mut out,
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": index, "arguments": args}),
        );
        event(
            &mut out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        index += 1;
    }
    if plan.truncated {
        event(
            &mut out,
            "response.incomplete",
            json!({"response": responses_object(ctx, plan, "incomplete")}),
        );
    } else {
        event(
            &mut out,
            "response.completed",
            json!({"response": responses_object(ctx, plan, "completed")}),
        );
    }
    out
}

/// An RFC 3339 UTC timestamp with nanoseconds, as Ollama's `created_at`.
fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_nanos()
    )
}

fn ollama_call(call: &ToolCall, i: usize) -> Value {
    let args = match &call.raw_arguments {
        Some(raw) => Value::String(raw.clone()),
        None if call.input.is_null() => json!({}),
        None => call.input.clone(),
    };
    json!({"function": {"index": i, "name": call.name, "arguments": args}})
}

fn ollama_stream(ctx: &Ctx, plan: &Plan) -> Vec<Vec<u8>> {
    let at = rfc3339_now();
    let mut out = Vec::new();
    if let Some(text) = plan.text {
        for (k, piece) in split(text, ctx.delta_chars).into_iter().enumerate() {
            out.push(ndjson(&json!({"model": ctx.model, "created_at": at,
                "message": {"role": "assistant", "content": piece}, "done": false})));
            if ctx.noise && k == 0 {
                out.push(b"\n".to_vec());
                out.push(ndjson(&json!({"model": ctx.model, "created_at": at,
                    "message": {"role": "assistant", "content": "", "thinking": ""},
                    "mock_unknown_field": 1, "done": false})));
            }
        }
    }
    if !plan.calls.is_empty() {
        let calls: Vec<Value> = plan
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| ollama_call(c, i))
            .collect();
        out.push(ndjson(&json!({"model": ctx.model, "created_at": at,
            "message": {"role": "assistant", "content": "", "tool_calls": calls},
            "done": false})));
    }
    out.push(ndjson(&ollama_final(
        ctx,
        plan,
        &at,
        json!({"role": "assistant", "content": ""}),
    )));
    out
}

fn ollama_final(ctx: &Ctx, plan: &Plan, at: &str, message: Value) -> Value {
    json!({"model": ctx.model, "created_at": at, "message": message,
           "done_reason": if plan.truncated { "length" } else { "stop" }, "done": true, "total_duration": 12_345_678u64,
           "load_duration": 1_234_567u64, "prompt_eval_count": ctx.input_tokens,
           "prompt_eval_duration": 2_345_678u64, "eval_count": plan.output_tokens(),
           "eval_duration": 3_456_789u64})
}

/// The single JSON body of a non-streamed reply.
fn full_body(ctx: &Ctx, plan: &Plan) -> Value {
    let output_tokens = plan.output_tokens();
    match ctx.wire {
        Wire::Anthropic => {
            let mut content = Vec::new();
            if let Some(text) = plan.text {
                content.push(json!({"type": "text", "text": text}));
            }
            for (i, call) in plan.calls.iter().enumerate() {
                let input = serde_json::from_str::<Value>(&arguments(call)).unwrap_or(json!({}));
                content.push(
                    json!({"type": "tool_use", "id": anthropic_tool_id(ctx.n, i),
                                    "name": call.name, "input": input}),
                );
            }
            let stop = plan.anthropic_stop();
            json!({"id": format!("msg_01Mock{:04}", ctx.n), "type": "message",
                   "role": "assistant", "model": ctx.model, "content": content,
                   "stop_reason": stop, "stop_sequence": null,
                   "usage": {"input_tokens": ctx.input_tokens, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": output_tokens}})
        }
        Wire::OpenAi => {
            let mut message = json!({"role": "assistant", "content": plan.text,
                                     "refusal": null, "annotations": []});
            if !plan.calls.is_empty() {
                let calls: Vec<Value> = plan
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        json!({"id": openai_tool_id(ctx.n, i), "type": "function",
                               "function": {"name": c.name, "arguments": arguments(c)}})
                    })
                    .collect();
                message["tool_calls"] = Value::Array(calls);
            }
            let finish = plan.openai_finish();
            json!({"id": format!("chatcmpl-Mock{:04}", ctx.n), "object": "chat.completion",
                   "created": unix_now(), "model": ctx.model, "system_fingerprint": "fp_mock",
                   "choices": [{"index": 0, "message": message, "logprobs": null,
                                "finish_reason": finish}],
                   "usage": {"prompt_tokens": ctx.input_tokens,
                             "completion_tokens": output_tokens,
                             "total_tokens": ctx.input_tokens + output_tokens}})
        }
        Wire::Ollama => {
            let mut message = json!({"role": "assistant", "content": plan.text.unwrap_or("")});
            if !plan.calls.is_empty() {
                let calls: Vec<Value> = plan
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ollama_call(c, i))
                    .collect();
                message["tool_calls"] = Value::Array(calls);
            }
            ollama_final(ctx, plan, &rfc3339_now(), message)
        }
        Wire::Responses => responses_object(ctx, plan, "completed"),
    }
}

fn render_fault(ctx: &Ctx, fault: &Fault) -> Response {
    match fault {
        Fault::RateLimited { retry_after_secs } => {
            let response = match ctx.wire {
                Wire::Anthropic => anthropic_error(
                    429,
                    "rate_limit_error",
                    "This request would exceed the rate limit for your organization of 50 requests per minute.",
                ),
                Wire::OpenAi | Wire::Responses => with_header(
                    openai_error(
                        429,
                        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again later.",
                        "requests",
                        None,
                        Some("rate_limit_exceeded"),
                    ),
                    "retry-after-ms",
                    (retry_after_secs * 1000).to_string(),
                ),
                Wire::Ollama => ollama_error(429, "too many requests, please try again later"),
            };
            with_header(response, "retry-after", retry_after_secs.to_string())
        }
        Fault::ServerError { status } => match ctx.wire {
            Wire::Anthropic if *status == 529 => {
                anthropic_error(529, "overloaded_error", "Overloaded")
            }
            Wire::Anthropic => anthropic_error(*status, "api_error", "Internal server error"),
            Wire::OpenAi | Wire::Responses => openai_error(
                *status,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
            Wire::Ollama => ollama_error(*status, "an internal error occurred"),
        },
        Fault::Unauthorized => match ctx.wire {
            Wire::Anthropic => anthropic_error(401, "authentication_error", "invalid x-api-key"),
            Wire::OpenAi | Wire::Responses => openai_unauthorized("sk-mock-invalid"),
            Wire::Ollama => ollama_error(401, "unauthorized"),
        },
        Fault::Forbidden => match ctx.wire {
            Wire::Anthropic => anthropic_error(
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            Wire::OpenAi | Wire::Responses => openai_error(
                403,
                "You are not allowed to sample from this model",
                "invalid_request_error",
                None,
                Some("model_not_allowed"),
            ),
            Wire::Ollama => ollama_error(403, "forbidden"),
        },
        Fault::NotFoundModel => match ctx.wire {
            Wire::Anthropic => {
                anthropic_error(404, "not_found_error", &format!("model: {}", ctx.model))
            }
            Wire::OpenAi | Wire::Responses => openai_error(
                404,
                &format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    ctx.model
                ),
                "invalid_request_error",
                None,
                Some("model_not_found"),
            ),
            Wire::Ollama => ollama_error(
                404,
                &format!("model \"{}\" not found, try pulling it first", ctx.model),
            ),
        },
        Fault::Overloaded if !ctx.stream => match ctx.wire {
            Wire::Anthropic => anthropic_error(529, "overloaded_error", "Overloaded"),
            Wire::OpenAi | Wire::Responses => openai_error(
                503,
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
                None,
            ),
            Wire::Ollama => ollama_error(
                503,
                "server busy, please try again.  maximum pending requests exceeded",
            ),
        },
        Fault::CutMidStream | Fault::TruncatedStream | Fault::MalformedJson if !ctx.stream => {
            let plan = Plan {
                text: Some(PARTIAL_TEXT),
                calls: &[],
                truncated: false,
            };
            let body = full_body(ctx, &plan).to_string().into_bytes();
            let half = body.len() / 2;
            match fault {
                Fault::CutMidStream => Response::Full {
                    status: 200,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body,
                    cut_at: Some(half),
                },
                _ => Response::Full {
                    status: 200,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: body[..half].to_vec(),
                    cut_at: None,
                },
            }
        }
        Fault::Stall | Fault::StallAfterHeaders if !ctx.stream => Response::Stream {
            headers: vec![("content-type".into(), "application/json".into())],
            pieces: Vec::new(),
            end: StreamEnd::Stall,
        },
        Fault::StallAfterHeaders => Response::Stream {
            headers: stream_headers(ctx.wire),
            pieces: Vec::new(),
            end: StreamEnd::Stall,
        },
        Fault::KeepAliveOnly | Fault::Endless { .. } => {
            let plan = Plan {
                text: Some(PARTIAL_TEXT),
                calls: &[],
                truncated: false,
            };
            let all = stream_pieces(ctx, &plan);
            // The opening event(s) and the start of the text, never the end.
            let first: Vec<Vec<u8>> = all[..all.len().min(3)].to_vec();
            let (repeat, interval) = match fault {
                Fault::Endless { interval_ms } => (
                    match ctx.wire {
                        Wire::Anthropic => sse(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "and on "}}),
                        ),
                        Wire::OpenAi => sse_data(&json!({"id": "chatcmpl-endless",
                            "object": "chat.completion.chunk", "created": 0, "model": ctx.model,
                            "choices": [{"index": 0, "delta": {"content": "and on "},
                                         "finish_reason": null}]})),
                        Wire::Ollama => ndjson(&json!({"model": ctx.model,
                            "created_at": rfc3339_now(),
                            "message": {"role": "assistant", "content": "and on "},
                            "done": false})),
                        Wire::Responses => sse(
                            "response.output_text.delta",
                            &json!({"type": "response.output_text.delta",
                                    "item_id": responses_item_id("msg", ctx.n, 0),
                                    "output_index": 0, "content_index": 0,
                                    "delta": "and on ", "sequence_number": 0}),
                        ),
                    },
                    std::time::Duration::from_millis(*interval_ms),
                ),
                _ => (
                    match ctx.wire {
                        Wire::Anthropic => sse("ping", &json!({"type": "ping"})),
                        Wire::OpenAi => b": keep-alive\n\n".to_vec(),
                        Wire::Ollama => b"\n".to_vec(),
                        Wire::Responses => b": keep-alive\n\n".to_vec(),
                    },
                    std::time::Duration::from_millis(20),
                ),
            };
            Response::Endless {
                headers: stream_headers(ctx.wire),
                first,
                repeat,
                interval,
            }
        }
        Fault::Overloaded
        | Fault::CutMidStream
        | Fault::TruncatedStream
        | Fault::MalformedJson
        | Fault::Stall => {
            let plan = Plan {
                text: Some(PARTIAL_TEXT),
                calls: &[],
                truncated: false,
            };
            let all = stream_pieces(ctx, &plan);
            // Enough to have started the text, never the final event.
            let keep = (all.len() / 2).max(1).min(all.len().saturating_sub(1));
            let mut pieces: Vec<Vec<u8>> = all[..keep].to_vec();
            let end = match fault {
                Fault::CutMidStream => StreamEnd::Cut,
                Fault::Stall => StreamEnd::Stall,
                _ => StreamEnd::Complete,
            };
            match fault {
                Fault::Overloaded => pieces.push(match ctx.wire {
                    Wire::Anthropic => sse(
                        "error",
                        &json!({"type": "error", "error": {"type": "overloaded_error",
                                                           "message": "Overloaded"}}),
                    ),
                    Wire::OpenAi => sse_data(&json!({"error": {
                        "message": "The server is overloaded or not ready yet.",
                        "type": "server_error", "param": null, "code": null}})),
                    Wire::Ollama => ndjson(&json!({"error":
                        "server busy, please try again.  maximum pending requests exceeded"})),
                    Wire::Responses => sse(
                        "response.failed",
                        &json!({
                        "type": "response.failed", "sequence_number": 0,
                        "response": responses_failed(ctx, "server_error",
                            "The server is overloaded or not ready yet.")}),
                    ),
                }),
                Fault::MalformedJson => {
                    pieces.push(match ctx.wire {
                        Wire::Anthropic => b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"unterminated\n\n".to_vec(),
                        Wire::OpenAi => b"data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"unterminated\n\n".to_vec(),
                        Wire::Ollama => b"{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"unterminated\n".to_vec(),
                        Wire::Responses => b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"unterminated\n\n".to_vec(),
                    });
                    // The rest, including the final event: a lenient client would wrongly
                    // take the reply as complete.
                    pieces.extend(all[keep..].iter().cloned());
                }
                _ => {}
            }
            Response::Stream {
                headers: stream_headers(ctx.wire),
                pieces,
                end,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_char_boundaries() {
        assert_eq!(split("héllo wörld", 4), vec!["héll", "o wö", "rld"]);
        assert_eq!(split("abc", 0), vec!["abc"]);
        assert_eq!(split("", 3), vec![""]);
    }

    #[test]
    fn timestamp_shape() {
        let ts = rfc3339_now();
        assert_eq!(ts.len(), 30, "{ts}");
        assert!(ts.ends_with('Z'));
        assert_eq!(&ts[4..5], "-");
        assert_eq!(&ts[10..11], "T");
    }
}
