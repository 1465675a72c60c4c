//! The mock server through raw HTTP/1.1 on real sockets: wire shapes, validation,
//! keep-alive, faults, and the `mock-model-server` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use safe_coder_test_support::{Fault, MockServer, Quirks, Reply, Script, ToolCall, Wire};
use serde_json::{json, Value};

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    fn sse_data(&self) -> Vec<Value> {
        self.body
            .split("\n\n")
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .filter(|d| *d != "[DONE]")
                    .map(|d| serde_json::from_str(d).expect("event JSON"))
            })
            .collect()
    }

    fn sse_names(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .map(str::to_string)
            .collect()
    }
}

/// Reads one response (content-length or chunked) from `reader`.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Answer {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header colon");
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            line.clear();
            reader.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim(), 16).expect("hex size");
            if size == 0 {
                line.clear();
                reader.read_line(&mut line).expect("final crlf");
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = get("content-length") {
        let mut b = vec![0; len.parse().expect("length")];
        reader.read_exact(&mut b).expect("body");
        body = b;
    }
    Answer {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8"),
    }
}

fn send(conn: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    conn.write_all(req.as_bytes()).expect("write");
}

fn call(server: &MockServer, headers: &[(&str, &str)], body: &Value) -> Answer {
    let mut conn = TcpStream::connect(server.addr()).expect("connect");
    send(&mut conn, "POST", server.wire().api_path(), headers, body);
    let mut reader = BufReader::new(conn);
    read_answer(&mut reader)
}

const ANTHROPIC_HEADERS: &[(&str, &str)] =
    &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")];
const OPENAI_HEADERS: &[(&str, &str)] = &[("authorization", "Bearer k")];

fn two_calls() -> Reply {
    Reply::text_and_tool_calls(
        "Looking.",
        vec![
            ToolCall::new("read_file", json!({"path": "a.txt"})),
            ToolCall::new("bash", json!({"command": "ls -la"})),
        ],
    )
}

#[test]
fn anthropic_stream_has_the_real_event_sequence() {
    let server =
        MockServer::start(Wire::Anthropic, Script::new(vec![two_calls()])).expect("server");
    let a = call(
        &server,
        ANTHROPIC_HEADERS,
        &json!({"model": "claude-x", "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let names = a.sse_names();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(names[names.len() - 2], "message_delta");
    let data = a.sse_data();
    assert_eq!(data[0]["message"]["model"], "claude-x");
    let starts: Vec<&Value> = data
        .iter()
        .filter(|d| d["type"] == "content_block_start")
        .collect();
    assert_eq!(starts.len(), 3);
    assert_eq!(starts[1]["content_block"]["type"], "tool_use");
    assert_eq!(starts[1]["content_block"]["name"], "read_file");
    let args: String = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta" && d["index"] == 2)
        .filter_map(|d| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("args"),
        json!({"command": "ls -la"})
    );
    let delta = data
        .iter()
        .find(|d| d["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
}

#[test]
fn openai_stream_assembles_by_index_and_ends_with_done() {
    let server = MockServer::start(Wire::OpenAi, Script::new(vec![two_calls()])).expect("server");
    let a = call(
        &server,
        OPENAI_HEADERS,
        &json!({"model": "gpt-x", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(a.status, 200);
    assert!(a.body.ends_with("data: [DONE]\n\n"));
    let chunks = a.sse_data();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let mut args = ["".to_string(), "".to_string()];
    for c in &chunks {
        if let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            for tc in calls {
                let i = tc["index"].as_u64().expect("index") as usize;
                args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args[1]).expect("args"),
        json!({"command": "ls -la"})
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .expect("finish");
    assert_eq!(finish, "tool_calls");
    let last = chunks.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["prompt_tokens"].as_u64().expect("prompt") > 0);
}

#[test]
fn ollama_streams_ndjson_and_answers_json_when_asked() {
    let server = MockServer::start(
        Wire::Ollama,
        Script::new(vec![two_calls(), Reply::text("plain")]),
    )
    .expect("server");
    let a = call(
        &server,
        &[],
        &json!({"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(a.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = a
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    let calls = lines
        .iter()
        .find_map(|l| l["message"]["tool_calls"].as_array())
        .expect("tool calls");
    assert_eq!(calls[0]["function"]["arguments"], json!({"path": "a.txt"}));
    let last = lines.last().expect("final");
    assert_eq!(last["done"], true);
    assert!(last["prompt_eval_count"].as_u64().expect("count") > 0);
    assert!(last["eval_count"].as_u64().expect("count") > 0);

    let b = call(
        &server,
        &[],
        &json!({"model": "qwen", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(b.header("content-type"), Some("application/json"));
    let v = b.json();
    assert_eq!(v["message"]["content"], "plain");
    assert_eq!(v["done"], true);
}

#[test]
fn non_streamed_replies_have_the_real_shapes() {
    let server =
        MockServer::start(Wire::Anthropic, Script::new(vec![two_calls()])).expect("server");
    let v = call(
        &server,
        ANTHROPIC_HEADERS,
        &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][1]["input"], json!({"path": "a.txt"}));
    assert_eq!(v["stop_reason"], "tool_use");

    let server = MockServer::start(Wire::OpenAi, Script::new(vec![two_calls()])).expect("server");
    let v = call(
        &server,
        OPENAI_HEADERS,
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][1]["function"]["arguments"],
        "{\"command\":\"ls -la\"}"
    );
}

#[test]
fn requests_are_validated_like_the_real_apis() {
    let server =
        MockServer::start(Wire::Anthropic, Script::new(vec![Reply::text("x")])).expect("server");
    let body =
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let a = call(&server, &[("anthropic-version", "2023-06-01")], &body);
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["error"]["type"], "authentication_error");
    let a = call(&server, &[("x-api-key", "k")], &body);
    assert_eq!(a.status, 400);
    let a = call(
        &server,
        ANTHROPIC_HEADERS,
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["message"], "max_tokens: Field required");
    let unanswered = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "no result"}]}]});
    let a = call(&server, ANTHROPIC_HEADERS, &unanswered);
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("toolu_1"));
    assert_eq!(server.remaining(), 1, "rejected requests consume no reply");
    assert_eq!(server.requests().len(), 4, "all requests are recorded");

    let server =
        MockServer::start(Wire::OpenAi, Script::new(vec![Reply::text("x")])).expect("server");
    let a = call(
        &server,
        &[],
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(a.status, 401);
    let a = call(
        &server,
        OPENAI_HEADERS,
        &json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
            {"role": "user", "content": "skipped the tool"}]}),
    );
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("call_1"));

    let server =
        MockServer::start(Wire::Ollama, Script::new(vec![Reply::text("x")])).expect("server");
    let a = call(&server, &[], &json!({"messages": []}));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "model is required");
}

#[test]
fn faults_and_exhaustion_use_api_shapes() {
    let server = MockServer::start(
        Wire::OpenAi,
        Script::new(vec![
            Reply::fault(Fault::RateLimited {
                retry_after_secs: 2,
            }),
            Reply::fault(Fault::NotFoundModel),
        ]),
    )
    .expect("server");
    let body = json!({"model": "gpt-nope", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let a = call(&server, OPENAI_HEADERS, &body);
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("2"));
    assert_eq!(a.json()["error"]["code"], "rate_limit_exceeded");
    let a = call(&server, OPENAI_HEADERS, &body);
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["code"], "model_not_found");
    let a = call(&server, OPENAI_HEADERS, &body);
    assert_eq!(a.status, 500);
    assert!(a.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("script exhausted"));
}

#[test]
fn a_cut_stream_closes_the_connection_without_ending_the_body() {
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::fault(Fault::CutMidStream)]),
    )
    .expect("server");
    let mut conn = TcpStream::connect(server.addr()).expect("connect");
    send(
        &mut conn,
        "POST",
        "/v1/messages",
        ANTHROPIC_HEADERS,
        &json!({"model": "m", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("read to the close");
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("message_start"));
    assert!(!raw.contains("message_stop"));
    assert!(!raw.ends_with("0\r\n\r\n"));
}

#[test]
fn connections_are_kept_alive() {
    let server = MockServer::start(
        Wire::OpenAi,
        Script::new(vec![Reply::text("one"), Reply::text("two")]),
    )
    .expect("server");
    let mut conn = TcpStream::connect(server.addr()).expect("connect");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    for want in ["one", "two"] {
        send(
            &mut conn,
            "POST",
            "/v1/chat/completions",
            OPENAI_HEADERS,
            &body,
        );
        let a = read_answer(&mut reader);
        let text: String = a
            .sse_data()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, want);
    }
    assert_eq!(server.connections(), 1);
}

#[test]
fn scripts_load_from_json() {
    let script = Script::from_json(
        r#"{"replies": [
            {"type": "tool_calls", "text": "Let me look.", "calls": [{"name": "read_file", "input": {"path": "a"}}]},
            {"type": "fault", "kind": "rate_limited", "retry_after_secs": 1},
            {"type": "fault", "kind": "cut_mid_stream"},
            {"type": "text", "text": "Done."}
        ], "noise": true, "chunk_delay_ms": 0, "delta_chars": 8}"#,
    )
    .expect("script");
    assert_eq!(script.replies.len(), 4);
    assert_eq!(
        script.replies[1],
        Reply::fault(Fault::RateLimited {
            retry_after_secs: 1
        })
    );
    assert!(script.noise);
    let round = Script::from_json(&serde_json::to_string(&script).expect("ser")).expect("de");
    assert_eq!(round, script);
}

#[test]
fn the_binary_serves_a_script_file() {
    let dir = std::env::temp_dir().join(format!("mock-model-server-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let script = dir.join("script.json");
    std::fs::write(
        &script,
        r#"{"replies": [{"type": "text", "text": "from the binary"}]}"#,
    )
    .expect("write script");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-model-server"))
        .args(["--wire", "ollama", "--script"])
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .expect("listening line")
        .to_string();
    let mut conn = TcpStream::connect(&addr).expect("connect");
    send(
        &mut conn,
        "POST",
        "/api/chat",
        &[],
        &json!({"model": "m", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let a = read_answer(&mut BufReader::new(conn));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(a.json()["message"]["content"], "from the binary");
}

fn openai_body(messages: Value, tools: bool, extra: Value) -> Value {
    let mut body = json!({"model": "m", "messages": messages});
    if tools {
        body["tools"] = json!([{"type": "function", "function": {
            "name": "read_file", "parameters": {"type": "object"}}}]);
    }
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[test]
fn quirks_behave_like_the_real_servers() {
    let read = || Reply::tool_calls(vec![ToolCall::new("read_file", json!({"path": "a"}))]);
    let quirks = Quirks {
        reject_null_content: true,
        ignore_tools_without_tool_choice: true,
        empty_stream_with_tools: true,
        ..Quirks::default()
    };
    let server = MockServer::start(
        Wire::OpenAi,
        Script::new(vec![read(), read()]).with_quirks(quirks),
    )
    .expect("server");
    // `content: null` on an assistant message: HTTP 500, nothing consumed.
    let history = json!([{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": null, "tool_calls": []}]);
    let a = call(
        &server,
        OPENAI_HEADERS,
        &openai_body(history, false, json!({})),
    );
    assert_eq!(a.status, 500);
    assert!(
        a.body.contains("Input should be a valid string"),
        "{}",
        a.body
    );
    // Streamed with tools: HTTP 200 and an empty body, nothing consumed.
    let user = json!([{"role": "user", "content": "hi"}]);
    let a = call(
        &server,
        OPENAI_HEADERS,
        &openai_body(
            user.clone(),
            true,
            json!({"stream": true, "tool_choice": "auto"}),
        ),
    );
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    assert_eq!(server.remaining(), 2);
    // Without tool_choice the tools are ignored: the call comes back as text.
    let a = call(
        &server,
        OPENAI_HEADERS,
        &openai_body(user.clone(), true, json!({})),
    );
    let message = &a.json()["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none(), "{message}");
    assert!(message["content"].is_string());
    // With it, the call.
    let a = call(
        &server,
        OPENAI_HEADERS,
        &openai_body(user, true, json!({"tool_choice": "auto"})),
    );
    assert_eq!(a.json()["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn split_calls_repeat_one_id_per_piece() {
    let quirks = Quirks {
        split_tool_calls: true,
        ..Quirks::default()
    };
    let call_reply = || Reply::tool_calls(vec![ToolCall::new("read_file", json!({"path": "abc"}))]);
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![call_reply()])
            .with_delta_chars(3)
            .with_quirks(quirks),
    )
    .expect("server");
    let a = call(
        &server,
        ANTHROPIC_HEADERS,
        &json!({"model": "m", "max_tokens": 10, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    let ids: Vec<String> = a
        .sse_data()
        .iter()
        .filter_map(|e| e.pointer("/content_block/id").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    assert!(ids.len() > 2, "one block per piece: {ids:?}");
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
}

#[test]
fn the_context_window_is_stated_and_enforced() {
    let quirks = Quirks {
        context_window: Some(100),
        ..Quirks::default()
    };
    let server = MockServer::start(
        Wire::OpenAi,
        Script::new(vec![Reply::text("ok")]).with_quirks(quirks),
    )
    .expect("server");
    let mut conn = TcpStream::connect(server.addr()).expect("connect");
    send(&mut conn, "GET", "/props", &[], &Value::Null);
    let props = read_answer(&mut BufReader::new(conn)).json();
    assert_eq!(props["default_generation_settings"]["n_ctx"], 100);
    let mut conn = TcpStream::connect(server.addr()).expect("connect");
    send(&mut conn, "GET", "/v1/models", &[], &Value::Null);
    let models = read_answer(&mut BufReader::new(conn)).json();
    assert_eq!(models["data"][0]["context_length"], 100);
    let user = json!([{"role": "user", "content": "hi"}]);
    let a = call(
        &server,
        OPENAI_HEADERS,
        &openai_body(user.clone(), false, json!({"max_tokens": 500})),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], "context_length_exceeded");
    let a = call(
        &server,
        OPENAI_HEADERS,
        &openai_body(user, false, json!({"max_tokens": 10})),
    );
    assert_eq!(a.status, 200);
}

#[test]
fn truncated_and_empty_replies_have_the_real_stop_reasons() {
    for (wire, headers) in [
        (Wire::Anthropic, ANTHROPIC_HEADERS),
        (Wire::OpenAi, OPENAI_HEADERS),
    ] {
        let server = MockServer::start(
            wire,
            Script::new(vec![
                Reply::Truncated {
                    text: "Half".into(),
                },
                Reply::Empty,
            ]),
        )
        .expect("server");
        let body = json!({"model": "m", "max_tokens": 10,
                          "messages": [{"role": "user", "content": "hi"}]});
        let cut = call(&server, headers, &body).json();
        let empty = call(&server, headers, &body).json();
        match wire {
            Wire::Anthropic => {
                assert_eq!(cut["stop_reason"], "max_tokens");
                assert_eq!(empty["content"], json!([]));
                assert_eq!(empty["usage"]["output_tokens"], 0);
            }
            _ => {
                assert_eq!(cut["choices"][0]["finish_reason"], "length");
                assert!(empty["choices"][0]["message"]["content"].is_null());
                assert_eq!(empty["usage"]["completion_tokens"], 0);
            }
        }
    }
}

/// The Responses API (what the Codex CLI speaks): the real event sequence with sequence
/// numbers, the text in deltas, the function call's arguments in deltas, the final
/// response with both items and usage; a tool output for an unknown call is refused.
#[test]
fn responses_stream_has_the_real_event_sequence() {
    let server = MockServer::start(
        Wire::Responses,
        Script {
            delta_chars: 4,
            ..Script::new(vec![
                two_calls(),
                Reply::Truncated {
                    text: "cut here".into(),
                },
            ])
        },
    )
    .expect("server");
    let body = json!({"model": "m", "stream": true, "input": "hi",
                      "tools": [{"type": "function", "name": "read_file", "parameters": {}},
                                {"type": "web_search"}]});
    let a = call(&server, OPENAI_HEADERS, &body);
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let names = a.sse_names();
    assert_eq!(names.first().map(String::as_str), Some("response.created"));
    assert_eq!(names.last().map(String::as_str), Some("response.completed"));
    let events = a.sse_data();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{e}");
        assert_eq!(e["type"].as_str(), Some(names[i].as_str()));
    }
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(text, "Looking.");
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .collect();
    assert_eq!(done.len(), 3);
    assert_eq!(done[1]["item"]["type"], "function_call");
    assert_eq!(done[1]["item"]["name"], "read_file");
    assert_eq!(done[1]["item"]["arguments"], r#"{"path":"a.txt"}"#);
    let args: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta" && e["output_index"] == 2)
        .map(|e| e["delta"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(args, r#"{"command":"ls -la"}"#);
    let completed = events.last().expect("completed");
    assert_eq!(completed["response"]["status"], "completed");
    assert_eq!(
        completed["response"]["output"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(completed["response"]["usage"]["output_tokens"].as_u64() > Some(0));

    // The answer to a call that was never made is refused, as the API does.
    let bad = json!({"model": "m", "stream": true,
                     "input": [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]});
    let a = call(&server, OPENAI_HEADERS, &bad);
    assert_eq!(a.status, 400);
    assert!(
        a.body
            .contains("No tool call found for function call output with call_id call_nope"),
        "{}",
        a.body
    );
    let a = call(&server, &[], &body);
    assert_eq!(a.status, 401);

    // Cut at the output limit: `response.incomplete`, not `completed`.
    let a = call(&server, OPENAI_HEADERS, &body);
    let names = a.sse_names();
    assert_eq!(
        names.last().map(String::as_str),
        Some("response.incomplete")
    );
    let last = a.sse_data().pop().expect("event");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
}
