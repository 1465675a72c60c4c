//! Every provider against the mock server of its wire format: a multi-turn tool
//! conversation, each injected fault, the fatal errors and cancellation.

use std::time::Duration;

use safe_coder_llm::{
    client, CancellationToken, ContentBlock, LlmError, Message, ModelClient, ModelRequest,
    ModelResponse, ProviderConfig, ProviderKind, RetryPolicy, Role, StopReason, StreamEvent,
    StreamLimits, ToolChoice, ToolInput, ToolSpec,
};
use safe_coder_test_support::{Fault, MockServer, Quirks, Reply, Script, ToolCall, Wire};
use serde_json::{json, Value};

const KEY: &str = "test-key-123";

fn wire(kind: ProviderKind) -> Wire {
    match kind {
        ProviderKind::Anthropic => Wire::Anthropic,
        ProviderKind::OpenAi => Wire::OpenAi,
        ProviderKind::Ollama => Wire::Ollama,
    }
}

/// Short delays so retries do not slow the tests down.
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

fn config(kind: ProviderKind, base_url: String) -> ProviderConfig {
    ProviderConfig {
        kind,
        base_url,
        api_key: Some(KEY.to_string()),
        model: "mock-model".to_string(),
        max_tokens: 1024,
        retry: fast_retries(),
        ..ProviderConfig::new(kind)
    }
}

fn start(kind: ProviderKind, script: Script) -> (MockServer, Box<dyn ModelClient>) {
    let server = MockServer::start(wire(kind), script).expect("mock server starts");
    let client = client(config(kind, server.base_url())).expect("client");
    (server, client)
}

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "write_file".into(),
            description: "Write a file".into(),
            input_schema: json!({"type": "object", "properties": {
                "path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"]}),
        },
        ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}},
                                 "required": ["path"]}),
        },
        ToolSpec {
            name: "bash".into(),
            description: "Run a command".into(),
            input_schema: json!({"type": "object", "properties": {"command": {"type": "string"}},
                                 "required": ["command"]}),
        },
    ]
}

fn request(messages: Vec<Message>) -> ModelRequest {
    ModelRequest {
        model: "mock-model".into(),
        system: "You are a careful coding agent.".into(),
        messages,
        tools: tools(),
        max_tokens: 1024,
    }
}

async fn run(
    client: &dyn ModelClient,
    req: &ModelRequest,
) -> (Result<ModelResponse, LlmError>, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let mut on_event = |e: StreamEvent| events.push(e);
    let result = client
        .stream(req, &mut on_event, &CancellationToken::new())
        .await;
    (result, events)
}

/// The text streamed after the last `Retrying`.
fn streamed_text(events: &[StreamEvent]) -> String {
    let start = events
        .iter()
        .rposition(|e| matches!(e, StreamEvent::Retrying { .. }))
        .map_or(0, |i| i + 1);
    events[start..]
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn retries(events: &[StreamEvent]) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Retrying {
                attempt, delay_ms, ..
            } => Some((*attempt, *delay_ms)),
            _ => None,
        })
        .collect()
}

fn results_for(response: &ModelResponse, error_on: &str) -> Message {
    Message {
        role: Role::User,
        content: response
            .message
            .tool_uses()
            .map(|(id, name, _)| ContentBlock::ToolResult {
                tool_use_id: id.to_string(),
                content: format!("result of {name}"),
                is_error: name == error_on,
            })
            .collect(),
    }
}

#[tokio::test]
async fn multi_turn_tool_scenario_for_every_provider() {
    for kind in ProviderKind::ALL {
        multi_turn_tool_scenario(kind).await;
    }
}

async fn multi_turn_tool_scenario(kind: ProviderKind) {
    let script = Script::new(vec![
        Reply::text_and_tool_calls(
            "I will write the file, then run it.",
            vec![
                ToolCall::new(
                    "write_file",
                    json!({"path": "hello.sh", "content": "echo \"hi — ünïcode\"\n"}),
                ),
                ToolCall::new("bash", json!({"command": "sh hello.sh"})),
            ],
        ),
        Reply::tool_calls(vec![ToolCall::new(
            "read_file",
            json!({"path": "hello.sh"}),
        )]),
        Reply::text("All done: the script prints hi."),
    ])
    .with_noise(true)
    .with_delta_chars(5);
    let (server, client) = start(kind, script);
    assert_eq!(client.kind(), kind);

    let mut messages = vec![Message::user_text("Write hello.sh and run it.")];

    // Turn 1: text and two tool calls, assembled from fragments.
    let (first, events) = run(client.as_ref(), &request(messages.clone())).await;
    let first = first.unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert_eq!(first.stop_reason, StopReason::ToolUse, "{kind}");
    assert_eq!(first.message.role, Role::Assistant);
    assert_eq!(first.message.text(), "I will write the file, then run it.");
    assert_eq!(streamed_text(&events), first.message.text(), "{kind}");
    let calls: Vec<(String, String, ToolInput)> = first
        .message
        .tool_uses()
        .map(|(id, name, input)| (id.to_string(), name.to_string(), input.clone()))
        .collect();
    assert_eq!(calls.len(), 2, "{kind}");
    assert_eq!(calls[0].1, "write_file");
    assert_eq!(
        calls[0].2,
        json!({"path": "hello.sh", "content": "echo \"hi — ünïcode\"\n"})
    );
    assert_eq!(calls[1].1, "bash");
    assert_eq!(calls[1].2, json!({"command": "sh hello.sh"}));
    assert_ne!(calls[0].0, calls[1].0, "{kind}: ids are distinct");
    let started: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStarted { id, name } => Some((id.clone(), name.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        calls
            .iter()
            .map(|(id, name, _)| (id.clone(), name.clone()))
            .collect::<Vec<_>>(),
        "{kind}"
    );
    assert!(first.usage.input_tokens > 0, "{kind}: {:?}", first.usage);
    assert!(first.usage.output_tokens > 0, "{kind}: {:?}", first.usage);

    messages.push(first.message.clone());
    messages.push(results_for(&first, "bash"));

    // Turn 2: one tool call, no text.
    let (second, _) = run(client.as_ref(), &request(messages.clone())).await;
    let second = second.unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert_eq!(second.stop_reason, StopReason::ToolUse);
    assert_eq!(second.message.text(), "");
    let (read_id, read_name, read_input) = second
        .message
        .tool_uses()
        .next()
        .map(|(i, n, v)| (i.to_string(), n.to_string(), v.clone()))
        .expect("a tool call");
    assert_eq!(read_name, "read_file");
    assert_eq!(read_input, json!({"path": "hello.sh"}));
    messages.push(second.message.clone());
    messages.push(results_for(&second, ""));

    // Turn 3: the final answer.
    let (third, _) = run(client.as_ref(), &request(messages.clone())).await;
    let third = third.unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert_eq!(third.stop_reason, StopReason::EndTurn);
    assert_eq!(third.message.text(), "All done: the script prints hi.");
    assert_eq!(third.message.tool_uses().count(), 0);

    // What the server received.
    let reqs = server.model_requests();
    assert_eq!(reqs.len(), 3, "{kind}");
    assert_eq!(server.connections(), 1, "{kind}: one pooled connection");
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.body["model"], "mock-model");
        assert_eq!(r.body["stream"], true);
        assert!(r
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")));
    }
    let seen = reqs[2].tool_results();
    assert_eq!(seen.len(), 3, "{kind}: {seen:?}");
    assert_eq!(seen[0].content, "result of write_file");
    assert!(!seen[0].is_error);
    assert!(seen[1].content.ends_with("result of bash"));
    assert!(seen[1].is_error, "{kind}: {seen:?}");
    assert_eq!(seen[2].content, "result of read_file");
    let last = &reqs[2].body;
    match kind {
        ProviderKind::Anthropic => {
            let h = &reqs[0];
            assert_eq!(h.header("x-api-key"), Some(KEY));
            assert_eq!(h.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(h.path, "/v1/messages");
            assert_eq!(last["max_tokens"], 1024);
            // Not api.anthropic.com: no cache_control, the system prompt as a string.
            assert_eq!(last["system"], "You are a careful coding agent.");
            assert!(!last.to_string().contains("cache_control"));
            assert_eq!(last["tools"][0]["name"], "write_file");
            assert_eq!(last["tools"][0]["input_schema"]["required"][0], "path");
            let msgs = last["messages"].as_array().expect("messages");
            assert_eq!(msgs.len(), 5);
            assert_eq!(msgs[1]["role"], "assistant");
            assert_eq!(msgs[1]["content"][0]["type"], "text");
            assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
            assert_eq!(msgs[1]["content"][1]["id"], calls[0].0.as_str());
            assert_eq!(msgs[1]["content"][2]["input"], calls[1].2);
            let results = msgs[2]["content"].as_array().expect("results");
            assert_eq!(results[0]["type"], "tool_result");
            assert_eq!(results[0]["tool_use_id"], calls[0].0.as_str());
            assert_eq!(results[0]["content"], "result of write_file");
            assert!(results[0].get("is_error").is_none());
            assert_eq!(results[1]["tool_use_id"], calls[1].0.as_str());
            assert_eq!(results[1]["is_error"], true);
            assert_eq!(msgs[4]["content"][0]["tool_use_id"], read_id.as_str());
        }
        ProviderKind::OpenAi => {
            let h = &reqs[0];
            assert_eq!(h.header("authorization"), Some(&*format!("Bearer {KEY}")));
            assert_eq!(h.path, "/v1/chat/completions");
            assert_eq!(last["max_tokens"], 1024);
            assert_eq!(last["stream_options"]["include_usage"], true);
            assert_eq!(last["tools"][1]["type"], "function");
            assert_eq!(last["tools"][1]["function"]["name"], "read_file");
            assert_eq!(
                last["tools"][1]["function"]["parameters"]["required"][0],
                "path"
            );
            let msgs = last["messages"].as_array().expect("messages");
            let roles: Vec<&str> = msgs.iter().filter_map(|m| m["role"].as_str()).collect();
            assert_eq!(
                roles,
                [
                    "system",
                    "user",
                    "assistant",
                    "tool",
                    "tool",
                    "assistant",
                    "tool"
                ]
            );
            assert_eq!(msgs[0]["content"], "You are a careful coding agent.");
            assert_eq!(msgs[2]["content"], "I will write the file, then run it.");
            let tc = &msgs[2]["tool_calls"];
            assert_eq!(tc[0]["id"], calls[0].0.as_str());
            assert_eq!(tc[0]["type"], "function");
            assert_eq!(tc[0]["function"]["name"], "write_file");
            let args: Value =
                serde_json::from_str(tc[0]["function"]["arguments"].as_str().expect("string"))
                    .expect("arguments are JSON text");
            assert_eq!(args, calls[0].2);
            assert_eq!(msgs[3]["tool_call_id"], calls[0].0.as_str());
            assert_eq!(msgs[3]["content"], "result of write_file");
            assert_eq!(msgs[4]["tool_call_id"], calls[1].0.as_str());
            assert_eq!(msgs[4]["content"], "Error: result of bash");
            // A tool-only assistant message carries "" (llama.cpp rejects null).
            assert_eq!(msgs[5]["content"], "");
            // Tools are offered with an explicit tool_choice.
            assert_eq!(reqs[0].body["tool_choice"], "auto");
            assert_eq!(msgs[6]["tool_call_id"], read_id.as_str());
        }
        ProviderKind::Ollama => {
            assert_eq!(reqs[0].path, "/api/chat");
            assert_eq!(
                reqs[0].header("authorization"),
                Some(&*format!("Bearer {KEY}"))
            );
            assert_eq!(last["options"]["num_predict"], 1024);
            assert_eq!(last["tools"][2]["function"]["name"], "bash");
            let msgs = last["messages"].as_array().expect("messages");
            let roles: Vec<&str> = msgs.iter().filter_map(|m| m["role"].as_str()).collect();
            assert_eq!(
                roles,
                [
                    "system",
                    "user",
                    "assistant",
                    "tool",
                    "tool",
                    "assistant",
                    "tool"
                ]
            );
            assert_eq!(msgs[2]["tool_calls"][0]["function"]["name"], "write_file");
            assert_eq!(
                msgs[2]["tool_calls"][1]["function"]["arguments"],
                calls[1].2
            );
            assert_eq!(msgs[3]["tool_name"], "write_file");
            assert_eq!(msgs[3]["content"], "result of write_file");
            assert_eq!(msgs[4]["tool_name"], "bash");
            assert_eq!(msgs[4]["content"], "Error: result of bash");
            assert_eq!(msgs[6]["tool_name"], "read_file");
        }
    }
}

/// Runs a one-shot request against a fresh server with `replies`.
async fn one_shot(
    kind: ProviderKind,
    replies: Vec<Reply>,
) -> (
    MockServer,
    Result<ModelResponse, LlmError>,
    Vec<StreamEvent>,
) {
    let (server, client) = start(kind, Script::new(replies));
    let (result, events) = run(client.as_ref(), &request(vec![Message::user_text("hello")])).await;
    (server, result, events)
}

#[tokio::test]
async fn rate_limit_is_retried_after_retry_after() {
    for kind in ProviderKind::ALL {
        let (server, result, events) = one_shot(
            kind,
            vec![
                Reply::fault(Fault::RateLimited {
                    retry_after_secs: 1,
                }),
                Reply::text("after the wait"),
            ],
        )
        .await;
        let response = result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(response.message.text(), "after the wait");
        // The server's retry-after (1 s) replaces the 1 ms backoff.
        assert_eq!(retries(&events), vec![(1, 1000)], "{kind}");
        assert_eq!(server.model_requests().len(), 2);
    }
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    for kind in ProviderKind::ALL {
        let (server, result, events) = one_shot(
            kind,
            vec![
                Reply::fault(Fault::ServerError { status: 500 }),
                Reply::fault(Fault::ServerError { status: 529 }),
                Reply::fault(Fault::ServerError { status: 503 }),
                Reply::text("finally"),
            ],
        )
        .await;
        let response = result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(response.message.text(), "finally");
        assert_eq!(
            retries(&events).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(server.model_requests().len(), 4);
    }
}

#[tokio::test]
async fn broken_streams_are_retried_and_never_returned_as_answers() {
    for fault in [
        Fault::CutMidStream,
        Fault::TruncatedStream,
        Fault::MalformedJson,
        Fault::Overloaded,
    ] {
        for kind in ProviderKind::ALL {
            let (_server, result, events) = one_shot(
                kind,
                vec![
                    Reply::fault(fault.clone()),
                    Reply::text("the complete answer"),
                ],
            )
            .await;
            let response = result.unwrap_or_else(|e| panic!("{kind} {fault:?}: {e}"));
            assert_eq!(
                response.message.text(),
                "the complete answer",
                "{kind} {fault:?}"
            );
            assert_eq!(retries(&events).len(), 1, "{kind} {fault:?}: {events:?}");
            assert_eq!(streamed_text(&events), "the complete answer");
        }
    }
}

#[tokio::test]
async fn a_stream_broken_every_time_is_an_error() {
    for (fault, expect) in [
        (Fault::CutMidStream, "stream broke off"),
        (Fault::TruncatedStream, "stream broke off"),
        (Fault::MalformedJson, "could not be understood"),
        (Fault::Overloaded, "kept failing"),
    ] {
        for kind in ProviderKind::ALL {
            let (server, result, events) =
                one_shot(kind, vec![Reply::fault(fault.clone()); 4]).await;
            let err = match result {
                Ok(r) => panic!("{kind} {fault:?}: a broken stream was returned: {r:?}"),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert!(msg.contains(expect), "{kind} {fault:?}: {msg}");
            assert!(msg.contains("after 4 attempts"), "{kind}: {msg}");
            assert_eq!(retries(&events).len(), 3);
            assert_eq!(server.model_requests().len(), 4);
            assert_eq!(server.remaining(), 0);
        }
    }
}

#[tokio::test]
async fn unknown_events_and_pings_are_ignored() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::text_and_tool_calls(
            "noise all around",
            vec![ToolCall::new("bash", json!({"command": "ls"}))],
        )])
        .with_noise(true)
        .with_delta_chars(3);
        let (_server, client) = start(kind, script);
        let (result, events) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        let response = result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(response.message.text(), "noise all around");
        assert_eq!(streamed_text(&events), "noise all around");
        assert_eq!(response.message.tool_uses().count(), 1);
        assert!(retries(&events).is_empty(), "{kind}: {events:?}");
    }
}

#[tokio::test]
async fn unauthorized_is_one_sentence_and_not_retried() {
    let expected = [
        (
            ProviderKind::Anthropic,
            "the anthropic API rejected the API key (HTTP 401): set ANTHROPIC_API_KEY or run `safe-coder config --api-key KEY`",
        ),
        (
            ProviderKind::OpenAi,
            "the openai API rejected the API key (HTTP 401): set OPENAI_API_KEY or run `safe-coder config --api-key KEY`",
        ),
        (
            ProviderKind::Ollama,
            "the ollama API rejected the API key (HTTP 401): set it with `safe-coder config --api-key KEY`",
        ),
    ];
    for (kind, sentence) in expected {
        let (server, result, events) = one_shot(
            kind,
            vec![Reply::fault(Fault::Unauthorized), Reply::text("never")],
        )
        .await;
        let err = result.expect_err("401 fails");
        assert!(matches!(err, LlmError::Auth { .. }), "{kind}: {err:?}");
        assert_eq!(err.to_string(), sentence);
        assert!(!err.to_string().contains(KEY));
        assert!(err.is_config_error());
        assert!(retries(&events).is_empty());
        assert_eq!(server.model_requests().len(), 1);
    }
}

#[tokio::test]
async fn a_wrong_key_is_rejected_by_the_real_check() {
    for kind in [ProviderKind::Anthropic, ProviderKind::OpenAi] {
        let script = Script::new(vec![Reply::text("never")]).with_api_key("the-right-key");
        let (server, client) = start(kind, script);
        let (result, _) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        let err = result.expect_err("wrong key");
        assert!(matches!(err, LlmError::Auth { .. }), "{kind}: {err:?}");
        assert_eq!(server.remaining(), 1);
    }
}

#[tokio::test]
async fn forbidden_is_not_retried() {
    for kind in ProviderKind::ALL {
        let (server, result, _) = one_shot(
            kind,
            vec![Reply::fault(Fault::Forbidden), Reply::text("never")],
        )
        .await;
        let err = result.expect_err("403 fails");
        assert!(
            matches!(err, LlmError::PermissionDenied { .. }),
            "{kind}: {err:?}"
        );
        assert!(err.to_string().contains("HTTP 403"), "{err}");
        assert_eq!(server.model_requests().len(), 1);
    }
}

#[tokio::test]
async fn an_unknown_model_is_one_sentence_with_the_fix() {
    let expected = [
        (
            ProviderKind::Anthropic,
            "the anthropic API does not know the model `mock-model`: choose another with --model or `safe-coder config --model NAME`",
        ),
        (
            ProviderKind::OpenAi,
            "the openai API does not know the model `mock-model`: choose another with --model or `safe-coder config --model NAME`",
        ),
        (
            ProviderKind::Ollama,
            "the ollama API does not know the model `mock-model`: run `ollama pull mock-model`, or choose an installed model with --model or `safe-coder config --model NAME`",
        ),
    ];
    for (kind, sentence) in expected {
        let (server, result, _) = one_shot(
            kind,
            vec![Reply::fault(Fault::NotFoundModel), Reply::text("never")],
        )
        .await;
        let err = result.expect_err("404 fails");
        assert!(
            matches!(err, LlmError::ModelNotFound { .. }),
            "{kind}: {err:?}"
        );
        assert_eq!(err.to_string(), sentence);
        assert_eq!(server.model_requests().len(), 1);
    }
}

#[tokio::test]
async fn a_wrong_base_url_names_the_convention() {
    for (kind, suffix, hint) in [
        (ProviderKind::Anthropic, "/v1", "without /v1"),
        (ProviderKind::OpenAi, "/v2", "with /v1"),
        (ProviderKind::Ollama, "/v1", "without /api"),
    ] {
        let server =
            MockServer::start(wire(kind), Script::new(vec![Reply::text("never")])).expect("server");
        let base = match kind {
            ProviderKind::OpenAi => format!("http://{}{suffix}", server.addr()),
            _ => format!("{}{suffix}", server.base_url()),
        };
        let client = client(config(kind, base)).expect("client");
        let (result, _) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        let err = result.expect_err("404");
        assert!(
            matches!(err, LlmError::EndpointNotFound { .. }),
            "{kind}: {err:?}"
        );
        assert!(err.to_string().contains(hint), "{kind}: {err}");
        assert_eq!(server.remaining(), 1);
    }
}

#[tokio::test]
async fn a_model_without_tools_is_named() {
    let (_server, result, _) = one_shot(
        ProviderKind::Ollama,
        vec![Reply::Raw {
            status: 400,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"error": "registry.ollama.ai/library/mock-model:latest does not support tools"})
                .to_string(),
        }],
    )
    .await;
    let err = result.expect_err("no tools");
    assert_eq!(
        err.to_string(),
        "the model `mock-model` does not support tool calling, which Safe Coder needs: choose one that does with --model or `safe-coder config --model NAME` (e.g. qwen2.5-coder or llama3.1)"
    );
}

#[tokio::test]
async fn a_web_page_is_not_taken_for_the_api() {
    let (server, result, _) = one_shot(
        ProviderKind::OpenAi,
        vec![Reply::Raw {
            status: 200,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: "<html><body>Welcome</body></html>".into(),
        }],
    )
    .await;
    let err = result.expect_err("html");
    assert!(matches!(err, LlmError::NotAnApi { .. }), "{err:?}");
    assert!(err.to_string().contains("with /v1"), "{err}");
    assert_eq!(server.model_requests().len(), 1, "not retried");
}

#[tokio::test]
async fn missing_key_and_bad_url_fail_before_any_request() {
    for kind in [ProviderKind::Anthropic, ProviderKind::OpenAi] {
        let mut cfg = ProviderConfig::new(kind);
        cfg.api_key = None;
        let err = client(cfg).err().expect("no key");
        assert!(matches!(err, LlmError::MissingApiKey { .. }), "{err:?}");
        let env = kind.api_key_env().expect("env");
        assert!(err.to_string().contains(env), "{err}");
    }
    assert!(client(ProviderConfig::new(ProviderKind::Ollama)).is_ok());
    let mut cfg = ProviderConfig::new(ProviderKind::Anthropic);
    cfg.api_key = Some("sk-ant-\u{201c}pasted\u{201d}".into());
    let err = client(cfg).err().expect("bad key");
    assert!(matches!(err, LlmError::InvalidApiKey { .. }), "{err:?}");
    assert!(!err.to_string().contains("pasted"));
    let mut cfg = ProviderConfig::new(ProviderKind::Ollama);
    cfg.base_url = "localhost:11434".into();
    let err = client(cfg).err().expect("bad url");
    assert!(matches!(err, LlmError::InvalidBaseUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut cfg = config(ProviderKind::Ollama, format!("http://127.0.0.1:{port}"));
    cfg.retry.max_retries = 2;
    let client = client(cfg).expect("client");
    let (result, events) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
    let err = result.expect_err("refused");
    assert!(matches!(err, LlmError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert!(msg.contains("ollama serve"), "{msg}");
    assert_eq!(retries(&events).len(), 2);
}

#[tokio::test]
async fn invalid_tool_arguments_become_an_input_the_core_can_answer() {
    for kind in ProviderKind::ALL {
        let (server, client) = start(
            kind,
            Script::new(vec![
                Reply::tool_calls(vec![
                    ToolCall::raw("bash", "{\"command\": \"ls"),
                    ToolCall::new("read_file", json!({"path": "a"})),
                ]),
                Reply::text("ok"),
            ]),
        );
        let mut messages = vec![Message::user_text("hi")];
        let (result, _) = run(client.as_ref(), &request(messages.clone())).await;
        let response = result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        let inputs: Vec<ToolInput> = response
            .message
            .tool_uses()
            .map(|(_, _, v)| v.clone())
            .collect();
        let (raw, error) = inputs[0].invalid().expect("invalid input");
        assert_eq!(raw, "{\"command\": \"ls", "{kind}");
        assert!(error.contains("EOF"), "{kind}: {error}");
        assert_eq!(inputs[1], json!({"path": "a"}));
        // The reply with the bad call and an error result can be sent back.
        messages.push(response.message.clone());
        messages.push(results_for(&response, "bash"));
        let (result, _) = run(client.as_ref(), &request(messages)).await;
        assert_eq!(
            result
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
                .message
                .text(),
            "ok"
        );
        assert_eq!(server.remaining(), 0);
        // No marker of ours reaches the model: OpenAI gets the text the model sent,
        // Anthropic and Ollama (which want an object) get `{}`.
        let sent = server.model_requests()[1].body.to_string();
        assert!(!sent.contains("__invalid"), "{kind}: {sent}");
        let history = &server.model_requests()[1].body["messages"];
        let assistant = history
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "assistant"))
            .expect("assistant message");
        match kind {
            ProviderKind::OpenAi => assert_eq!(
                assistant["tool_calls"][0]["function"]["arguments"],
                "{\"command\": \"ls"
            ),
            ProviderKind::Anthropic => assert_eq!(assistant["content"][0]["input"], json!({})),
            ProviderKind::Ollama => {
                assert_eq!(
                    assistant["tool_calls"][0]["function"]["arguments"],
                    json!({})
                )
            }
        }
    }
}

#[tokio::test]
async fn cancellation_stops_a_stalled_stream() {
    for kind in ProviderKind::ALL {
        let (_server, client) = start(kind, Script::new(vec![Reply::fault(Fault::Stall)]));
        let token = CancellationToken::new();
        let trigger = token.clone();
        let mut events = Vec::new();
        let mut on_event = |e: StreamEvent| {
            if matches!(e, StreamEvent::TextDelta { .. }) {
                trigger.cancel();
            }
            events.push(e);
        };
        let result = client
            .stream(
                &request(vec![Message::user_text("hi")]),
                &mut on_event,
                &token,
            )
            .await;
        assert!(
            matches!(result, Err(LlmError::Cancelled)),
            "{kind}: {result:?}"
        );
        assert!(!events.is_empty());
    }
}

#[tokio::test]
async fn cancellation_interrupts_the_backoff() {
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::fault(Fault::ServerError { status: 500 })]),
    )
    .expect("server");
    // A long backoff: only cancellation can end this promptly.
    let mut cfg = config(ProviderKind::Anthropic, server.base_url());
    cfg.retry.base_delay = Duration::from_secs(600);
    cfg.retry.max_delay = Duration::from_secs(600);
    let client = client(cfg).expect("client");
    let token = CancellationToken::new();
    let trigger = token.clone();
    let mut on_event = |e: StreamEvent| {
        if matches!(e, StreamEvent::Retrying { .. }) {
            trigger.cancel();
        }
    };
    let result = client
        .stream(
            &request(vec![Message::user_text("hi")]),
            &mut on_event,
            &token,
        )
        .await;
    assert!(matches!(result, Err(LlmError::Cancelled)), "{result:?}");
}

#[tokio::test]
async fn an_exhausted_script_fails_clearly() {
    let (_server, result, _) = one_shot(ProviderKind::OpenAi, vec![]).await;
    let err = result.expect_err("exhausted");
    assert!(err.to_string().contains("script exhausted"), "{err}");
}

#[tokio::test]
async fn a_json_reply_to_a_stream_request_is_understood() {
    let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": "plain JSON"},
                    {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 7}});
    let (_server, result, events) = one_shot(
        ProviderKind::Anthropic,
        vec![Reply::Raw {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }],
    )
    .await;
    let response = result.expect("parsed");
    assert_eq!(response.message.text(), "plain JSON");
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!(response.usage.input_tokens, 12);
    assert_eq!(response.usage.output_tokens, 7);
    assert_eq!(streamed_text(&events), "plain JSON");
    let openai = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
    let (_server, result, _) = one_shot(
        ProviderKind::OpenAi,
        vec![Reply::Raw {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: openai.to_string(),
        }],
    )
    .await;
    let response = result.expect("parsed");
    let call = response.message.tool_uses().next().expect("call");
    assert_eq!(call.0, "call_1");
    assert_eq!(call.2, &json!({"command": "ls"}));
    assert_eq!(response.usage.output_tokens, 4);
}

#[tokio::test]
async fn usage_is_read_from_each_api() {
    for kind in ProviderKind::ALL {
        let (server, result, _) = one_shot(kind, vec![Reply::text("counting tokens")]).await;
        let usage = result.expect("ok").usage;
        let sent = server.model_requests()[0].body.to_string().len() as u64;
        // The mock reports len/4 of the body it received as the prompt size.
        let received = sent / 4;
        assert!(
            usage.input_tokens.abs_diff(received) <= 2,
            "{kind}: {usage:?} vs {received}"
        );
        assert_eq!(usage.output_tokens, "counting tokens".len() as u64 / 4 + 1);
    }
}

#[tokio::test]
async fn slow_streams_in_tiny_pieces_are_assembled() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::text_and_tool_calls(
            "slowly, two characters at a time",
            vec![ToolCall::new("read_file", json!({"path": "src/main.rs"}))],
        )])
        .with_delta_chars(2)
        .with_chunk_delay_ms(1);
        let (_server, client) = start(kind, script);
        let (result, events) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        let response = result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(response.message.text(), "slowly, two characters at a time");
        let deltas = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
            .count();
        assert!(deltas >= 16, "{kind}: {deltas} deltas");
        let call = response.message.tool_uses().next().expect("call");
        assert_eq!(call.2, &json!({"path": "src/main.rs"}));
    }
}

// ---------------------------------------------------------------------------------------
// Real servers' quirks (docs/interop.md) and stream limits.

fn start_with(
    kind: ProviderKind,
    script: Script,
    adjust: impl FnOnce(&mut ProviderConfig),
) -> (MockServer, Box<dyn ModelClient>) {
    let server = MockServer::start(wire(kind), script).expect("mock server starts");
    let mut cfg = config(kind, server.base_url());
    adjust(&mut cfg);
    let client = client(cfg).expect("client");
    (server, client)
}

fn warnings(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Warning { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn tool_only_messages_and_tool_choice_suit_a_strict_server() {
    // llama.cpp's server: `content: null` is a 500, tools without tool_choice are ignored.
    let quirks = Quirks {
        reject_null_content: true,
        ignore_tools_without_tool_choice: true,
        ..Quirks::default()
    };
    for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
        let script = Script::new(vec![
            Reply::tool_calls(vec![ToolCall::new("read_file", json!({"path": "a"}))]),
            Reply::text("done"),
            Reply::text("and again"),
        ])
        .with_quirks(quirks.clone());
        let (server, client) = start(kind, script);
        let mut messages = vec![Message::user_text("read a")];
        let (first, _) = run(client.as_ref(), &request(messages.clone())).await;
        let first = first.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(
            first.message.tool_uses().count(),
            1,
            "{kind}: tools were offered"
        );
        messages.push(first.message.clone());
        messages.push(results_for(&first, ""));
        let (second, _) = run(client.as_ref(), &request(messages.clone())).await;
        assert_eq!(
            second
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
                .message
                .text(),
            "done"
        );
        // A later question resends the same history: it must still be accepted.
        messages.push(Message::assistant_text("done"));
        messages.push(Message::user_text("again?"));
        let (third, _) = run(client.as_ref(), &request(messages)).await;
        assert_eq!(
            third
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
                .message
                .text(),
            "and again"
        );
        assert!(server.model_requests()[0].body.get("tool_choice").is_some());
    }
}

#[tokio::test]
async fn a_forced_function_applies_to_the_first_request_of_a_turn() {
    for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
        let script = Script::new(vec![
            Reply::tool_calls(vec![ToolCall::new("read_file", json!({"path": "a"}))]),
            Reply::text("done"),
        ]);
        let (server, client) = start_with(kind, script, |c| {
            c.tool_choice = ToolChoice::Function("read_file".into());
        });
        let mut messages = vec![Message::user_text("read a")];
        let (first, _) = run(client.as_ref(), &request(messages.clone())).await;
        let first = first.unwrap_or_else(|e| panic!("{kind}: {e}"));
        messages.push(first.message.clone());
        messages.push(results_for(&first, ""));
        run(client.as_ref(), &request(messages))
            .await
            .0
            .expect("follow-up");
        let reqs = server.model_requests();
        match kind {
            ProviderKind::OpenAi => {
                assert_eq!(
                    reqs[0].body["tool_choice"],
                    json!({"type": "function", "function": {"name": "read_file"}})
                );
                assert_eq!(reqs[1].body["tool_choice"], "auto");
            }
            _ => {
                assert_eq!(
                    reqs[0].body["tool_choice"],
                    json!({"type": "tool", "name": "read_file"})
                );
                assert_eq!(reqs[1].body["tool_choice"], json!({"type": "auto"}));
            }
        }
    }
}

#[tokio::test]
async fn an_empty_200_under_streaming_is_asked_again_without_streaming_and_remembered() {
    let script = Script::new(vec![
        Reply::tool_calls(vec![ToolCall::new("read_file", json!({"path": "a"}))]),
        Reply::text("done"),
    ])
    .with_quirks(Quirks {
        empty_stream_with_tools: true,
        ..Quirks::default()
    });
    let (server, client) = start(ProviderKind::OpenAi, script);
    let mut messages = vec![Message::user_text("read a")];
    let (first, events) = run(client.as_ref(), &request(messages.clone())).await;
    let first = first.expect("the non-streamed request gets the reply");
    assert_eq!(first.message.tool_uses().count(), 1);
    assert_eq!(retries(&events).len(), 1, "{events:?}");
    let warned = warnings(&events);
    assert_eq!(warned.len(), 1, "{events:?}");
    assert!(warned[0].contains("without streaming"), "{}", warned[0]);
    messages.push(first.message.clone());
    messages.push(results_for(&first, ""));
    let (second, events) = run(client.as_ref(), &request(messages)).await;
    assert_eq!(second.expect("second").message.text(), "done");
    assert!(retries(&events).is_empty(), "remembered: {events:?}");
    let reqs = server.model_requests();
    let streamed: Vec<bool> = reqs
        .iter()
        .map(|r| r.body["stream"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(streamed, vec![true, false, false]);
    // OpenAI refuses stream_options without streaming.
    assert!(reqs[1].body.get("stream_options").is_none());
    // The fallback went out on the connection the empty reply had broken, was dropped,
    // and was sent again at once on a new one, silently.
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn after_the_fallback_the_servers_real_error_is_reported() {
    // A prompt larger than the window: streamed, the server fails with an empty 200;
    // asked without streaming, it says why (HTTP 400).
    let script = Script::new(vec![Reply::text("never")]).with_quirks(Quirks {
        empty_stream_with_tools: true,
        context_window: Some(100),
        ..Quirks::default()
    });
    let (server, client) = start(ProviderKind::OpenAi, script);
    let (result, _) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
    match result {
        Err(LlmError::ContextOverflow { window, .. }) => assert_eq!(window, Some(100)),
        other => panic!("{other:?}"),
    }
    let err = run(client.as_ref(), &request(vec![Message::user_text("hi")]))
        .await
        .0
        .expect_err("still too long");
    let text = err.to_string();
    assert!(text.contains("context window of 100 tokens"), "{text}");
    assert!(!text.contains("/compress"), "no front-end advice: {text}");
    assert_eq!(server.remaining(), 1);
    // An error is no proof that streaming is the problem: the second request streamed.
    let streamed: Vec<bool> = server
        .model_requests()
        .iter()
        .map(|r| r.body["stream"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(streamed, vec![true, false, true, false]);
}

#[tokio::test]
async fn max_tokens_is_clamped_to_the_window_the_server_states() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::text("ok")]).with_quirks(Quirks {
            context_window: Some(3000),
            ..Quirks::default()
        });
        let (server, client) = start_with(kind, script, |c| c.max_tokens = 8192);
        let mut req = request(vec![Message::user_text("hi")]);
        req.max_tokens = 0;
        let expected = match kind {
            ProviderKind::Anthropic => None,
            _ => Some(3000),
        };
        assert_eq!(client.context_window().await, expected, "{kind}");
        let (result, _) = run(client.as_ref(), &req).await;
        let body = &server.model_requests()[0].body;
        let asked = body
            .get("max_tokens")
            .or_else(|| body.pointer("/options/num_predict"))
            .and_then(Value::as_u64)
            .expect("max_tokens");
        if expected.is_some() {
            assert!(asked < 3000, "{kind}: {asked}");
            assert_eq!(result.expect("fits").message.text(), "ok");
        } else {
            // Anthropic's API does not state the window: the mock refuses, and the
            // error names the window.
            assert_eq!(asked, 8192);
            let err = result.expect_err("too long");
            assert!(
                matches!(
                    err,
                    LlmError::ContextOverflow {
                        window: Some(3000),
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(client.context_window().await, Some(3000), "learned");
        }
    }
}

#[tokio::test]
async fn tool_calls_split_under_one_id_are_joined_with_a_warning() {
    for kind in [ProviderKind::Anthropic, ProviderKind::OpenAi] {
        let script = Script::new(vec![
            Reply::tool_calls(vec![
                ToolCall::new("read_file", json!({"path": "src/main.rs"})),
                ToolCall::new("bash", json!({"command": "ls -la"})),
            ]),
            Reply::text("done"),
        ])
        .with_delta_chars(4)
        .with_quirks(Quirks {
            split_tool_calls: true,
            ..Quirks::default()
        });
        let (server, client) = start(kind, script);
        let mut messages = vec![Message::user_text("look")];
        let (first, events) = run(client.as_ref(), &request(messages.clone())).await;
        let first = first.unwrap_or_else(|e| panic!("{kind}: {e}"));
        let calls: Vec<_> = first.message.tool_uses().collect();
        assert_eq!(calls.len(), 2, "{kind}: {calls:?}");
        assert_eq!(*calls[0].2, json!({"path": "src/main.rs"}));
        assert_eq!(*calls[1].2, json!({"command": "ls -la"}));
        assert_eq!(warnings(&events).len(), 2, "{kind}: {events:?}");
        messages.push(first.message.clone());
        messages.push(results_for(&first, ""));
        // The repaired history passes the API's unique-id check.
        let (second, _) = run(client.as_ref(), &request(messages)).await;
        assert_eq!(
            second
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
                .message
                .text(),
            "done"
        );
        assert_eq!(server.remaining(), 0);
    }
}

#[tokio::test]
async fn a_reply_cut_at_the_token_limit_says_so_on_every_wire() {
    for kind in ProviderKind::ALL {
        let (_server, result, _) = one_shot(
            kind,
            vec![Reply::Truncated {
                text: "Half a sen".into(),
            }],
        )
        .await;
        let response = result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(response.stop_reason, StopReason::MaxTokens, "{kind}");
        assert_eq!(response.message.text(), "Half a sen");
    }
}

#[tokio::test]
async fn an_empty_reply_is_asked_again_once_then_is_an_error() {
    for kind in ProviderKind::ALL {
        let (server, result, events) =
            one_shot(kind, vec![Reply::Empty, Reply::text("there")]).await;
        assert_eq!(
            result
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
                .message
                .text(),
            "there"
        );
        assert_eq!(retries(&events).len(), 1, "{kind}");
        assert_eq!(server.remaining(), 0);
        // The second try went without streaming (LiteLLM turns a server's failure
        // under streaming into an empty reply), and that is remembered.
        let streamed: Vec<Option<bool>> = server
            .model_requests()
            .iter()
            .map(|r| r.body["stream"].as_bool())
            .collect();
        assert_eq!(streamed, vec![Some(true), Some(false)], "{kind}");
        assert_eq!(warnings(&events).len(), 1, "{kind}: {events:?}");

        let (server, result, _) = one_shot(
            kind,
            vec![Reply::Empty, Reply::Empty, Reply::text("unused")],
        )
        .await;
        let err = result.expect_err("empty twice");
        assert!(
            matches!(err, LlmError::EmptyReply { .. }),
            "{kind}: {err:?}"
        );
        assert!(err.to_string().contains("empty reply"), "{err}");
        assert_eq!(server.remaining(), 1, "{kind}: asked exactly twice");
    }
}

fn limited(idle_ms: u64, overall_ms: u64, max_bytes: usize) -> impl FnOnce(&mut ProviderConfig) {
    move |c: &mut ProviderConfig| {
        c.retry = RetryPolicy::none();
        c.limits = StreamLimits {
            idle_timeout: Duration::from_millis(idle_ms),
            overall_timeout: Duration::from_millis(overall_ms),
            max_reply_bytes: max_bytes,
        };
    }
}

#[tokio::test]
async fn a_stream_that_stalls_after_its_headers_is_cut() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::fault(Fault::StallAfterHeaders)]);
        let (_server, client) = start_with(kind, script, limited(300, 60_000, 1 << 20));
        let (result, _) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        assert!(
            matches!(&result, Err(LlmError::StreamCut { detail, .. }) if detail.contains("keep-alives")),
            "{kind}: {result:?}"
        );
    }
}

#[tokio::test]
async fn keep_alives_alone_do_not_keep_a_stream_alive_and_the_cut_is_retried() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::fault(Fault::KeepAliveOnly), Reply::text("ok")]);
        let (_server, client) = start_with(kind, script, |c| {
            limited(300, 60_000, 1 << 20)(c);
            c.retry = fast_retries();
        });
        let (result, events) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        assert_eq!(
            result
                .unwrap_or_else(|e| panic!("{kind}: {e}"))
                .message
                .text(),
            "ok"
        );
        assert_eq!(retries(&events).len(), 1, "{kind}");
        assert_eq!(streamed_text(&events), "ok");
    }
}

#[tokio::test]
async fn an_endless_stream_is_cut_by_the_overall_cap() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::fault(Fault::Endless { interval_ms: 10 })]);
        let (_server, client) = start_with(kind, script, limited(5_000, 500, 64 << 20));
        let (result, _) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        assert!(
            matches!(&result, Err(LlmError::StreamCut { detail, .. }) if detail.contains("cap")),
            "{kind}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_reply_larger_than_the_cap_is_refused() {
    for kind in ProviderKind::ALL {
        let script = Script::new(vec![Reply::fault(Fault::Endless { interval_ms: 0 })]);
        let (_server, client) = start_with(kind, script, limited(5_000, 60_000, 256 * 1024));
        let (result, _) = run(client.as_ref(), &request(vec![Message::user_text("hi")])).await;
        assert!(
            matches!(result, Err(LlmError::ReplyTooLarge { limit: 262_144, .. })),
            "{kind}: {result:?}"
        );
    }
}
