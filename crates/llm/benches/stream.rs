//! Per-request client overhead against the mock server, for each provider.
//!
//! Each request is one short streamed reply with text and a tool call, answered at once
//! by the mock on 127.0.0.1, so the round trip is almost all client time: serialising
//! the request, HTTP on a pooled connection, decoding the stream, assembling the reply.
//! Run with `cargo bench -p safe-coder-llm --bench stream` (`-- N` sets the number of
//! requests per provider, default 2000).

use std::time::{Duration, Instant};

use safe_coder_llm::sse::SseDecoder;
use safe_coder_llm::{
    client, CancellationToken, ContentBlock, Message, ModelRequest, ProviderConfig, ProviderKind,
    RetryPolicy, Role, StreamEvent, ToolSpec,
};
use safe_coder_test_support::{MockServer, Reply, Script, ToolCall, Wire};
use serde_json::json;

fn wire(kind: ProviderKind) -> Wire {
    match kind {
        ProviderKind::Anthropic => Wire::Anthropic,
        ProviderKind::OpenAi => Wire::OpenAi,
        ProviderKind::Ollama => Wire::Ollama,
    }
}

/// A conversation of a realistic shape: system prompt, four tools, a few turns with
/// tool results.
fn request() -> ModelRequest {
    request_with(3, 30)
}

/// `turns` tool round trips whose results are `result_bytes` long.
fn request_with(turns: usize, result_bytes: usize) -> ModelRequest {
    let tool = |name: &str| ToolSpec {
        name: name.into(),
        description: format!("The {name} tool, described in a sentence or two for the model."),
        input_schema: json!({"type": "object", "properties": {
            "path": {"type": "string", "description": "Relative path"},
            "content": {"type": "string"}}, "required": ["path"]}),
    };
    let mut messages = vec![Message::user_text("Create hello.txt, then show it.")];
    for i in 0..turns {
        let id = format!("call_{i}");
        messages.push(Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Text {
                    text: "Let me do that.".into(),
                },
                ContentBlock::ToolUse {
                    id: id.clone(),
                    name: "write_file".into(),
                    input: json!({"path": "hello.txt", "content": "hello\n"}).into(),
                },
            ],
        });
        messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: id,
                content: "wrote 6 bytes to hello.txt\n".repeat(result_bytes / 27 + 1),
                is_error: false,
            }],
        });
    }
    ModelRequest {
        model: "mock-model".into(),
        system: "You are Safe Coder, a careful coding agent. ".repeat(20),
        messages,
        tools: ["read_file", "write_file", "edit_file", "bash"]
            .iter()
            .map(|n| tool(n))
            .collect(),
        max_tokens: 4096,
    }
}

fn reply() -> Reply {
    Reply::text_and_tool_calls(
        "I'll check the file.",
        vec![ToolCall::new("read_file", json!({"path": "hello.txt"}))],
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cancel = CancellationToken::new();
    println!("llm stream bench: {n} requests per provider, short reply with a tool call, mock on 127.0.0.1");
    for (label, req, n) in [
        ("short history", request(), n),
        (
            "long history (100 tool results of 4 KB)",
            request_with(100, 4096),
            n / 10,
        ),
    ] {
        println!(
            "{label}: {} KB request body",
            serde_json::to_vec(&req)
                .map(|v| v.len() / 1024)
                .unwrap_or(0)
        );
        for kind in ProviderKind::ALL {
            let warmup = 50;
            let script = Script::new(vec![reply(); n + warmup + 1]).with_delta_chars(8);
            let server = MockServer::start(wire(kind), script).expect("mock server");
            let config = ProviderConfig {
                kind,
                base_url: server.base_url(),
                api_key: Some("bench-key".into()),
                model: "mock-model".into(),
                max_tokens: 4096,
                retry: RetryPolicy::default(),
                ..ProviderConfig::new(kind)
            };
            rt.block_on(async {
            // Cold: making the client plus its first request (TLS setup, pool, connect).
            let t = Instant::now();
            let model = client(config).expect("client");
            let mut sink = |_: StreamEvent| {};
            model
                .stream(&req, &mut sink, &cancel)
                .await
                .expect("first request");
            let cold = t.elapsed();
            for _ in 0..warmup {
                model.stream(&req, &mut sink, &cancel).await.expect("warmup");
            }
            let mut times = Vec::with_capacity(n);
            let mut events = 0usize;
            for _ in 0..n {
                let mut count = |_: StreamEvent| events += 1;
                let t = Instant::now();
                let response = model
                    .stream(&req, &mut count, &cancel)
                    .await
                    .expect("request");
                times.push(t.elapsed());
                assert_eq!(response.message.tool_uses().count(), 1);
            }
            times.sort();
            println!(
                "{:<9}  round trip median {}  p95 {}  p99 {}  max {}  | cold first request {}  | {} events/reply  | {} connection(s)",
                kind.as_str(),
                us(percentile(&times, 0.5)),
                us(percentile(&times, 0.95)),
                us(percentile(&times, 0.99)),
                us(*times.last().expect("times")),
                us(cold),
                events / n,
                server.connections(),
            );
        });
        }
    }

    // What a first request pays once: building the HTTP client (rustls, web PKI roots).
    let mut builds: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let c = reqwest::Client::builder().build().expect("reqwest client");
            let e = t.elapsed();
            drop(c);
            e
        })
        .collect();
    builds.sort();
    println!(
        "reqwest::Client build (after the ones above): max {} median {}",
        us(builds[4]),
        us(builds[2])
    );

    // Decoder throughput on a large stream, split in network-sized pieces.
    let mut stream = String::new();
    for i in 0..20_000 {
        stream.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} \"}}}}\n\n"
        ));
    }
    let bytes = stream.as_bytes();
    let t = Instant::now();
    let mut dec = SseDecoder::new();
    let mut count = 0;
    for piece in bytes.chunks(1400) {
        dec.push(piece);
        while dec.next_event().is_some() {
            count += 1;
        }
    }
    let elapsed = t.elapsed();
    println!(
        "sse decoder: {count} events, {:.1} MB in {} ({:.0} MB/s)",
        bytes.len() as f64 / 1e6,
        us(elapsed),
        bytes.len() as f64 / 1e6 / elapsed.as_secs_f64()
    );
}
