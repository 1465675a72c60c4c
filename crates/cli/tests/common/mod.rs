#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use safe_coder_test_support::{MockServer, Reply, Script, ToolCall, Wire};
use serde_json::{json, Value};
use tempfile::TempDir;

/// A user's world: a home with config and data dirs, and a project.
pub struct World {
    pub root: TempDir,
    pub home: PathBuf,
    pub project: PathBuf,
}

/// What [`with_world_setup`] runs on each new [`World`].
type WorldSetup = Option<Box<dyn Fn(&World)>>;

thread_local! {
    /// Run on every [`World`] this thread makes (see [`with_world_setup`]).
    static WORLD_SETUP: std::cell::RefCell<WorldSetup> = const { std::cell::RefCell::new(None) };
}

/// Runs `body` with `setup` applied to every [`World`] it makes on this thread: how a
/// backend that needs configuration (a VM's image and binaries) reuses the per-backend
/// scenarios of `suite/backends.rs`. Each test runs on its own thread, so tests do not
/// see each other's setup.
pub fn with_world_setup<T>(setup: impl Fn(&World) + 'static, body: impl FnOnce() -> T) -> T {
    WORLD_SETUP.with(|s| *s.borrow_mut() = Some(Box::new(setup)));
    let out = body();
    WORLD_SETUP.with(|s| *s.borrow_mut() = None);
    out
}

impl World {
    pub fn new() -> World {
        let root = tempfile::tempdir().expect("tempdir");
        let home = root.path().join("home");
        let project = root.path().join("project");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all(&project).expect("project");
        let world = World {
            root,
            home,
            project,
        };
        WORLD_SETUP.with(|s| {
            if let Some(f) = s.borrow().as_ref() {
                f(&world);
            }
        });
        world
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.join(".config/safe-coder")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.home.join(".local/share/safe-coder")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.project.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.project.join(rel)).ok()
    }

    /// `safe-coder` with this world's HOME and no provider variables from the host.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_safe-coder"));
        c.env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("SAFE_CODER_APPROVAL_MODE")
            .env_remove("OLLAMA_HOST")
            .env_remove("SAFE_CODER_PROVIDER")
            .env_remove("SAFE_CODER_MODEL")
            .env_remove("SAFE_CODER_BACKEND")
            .env_remove("NO_COLOR")
            .current_dir(&self.project)
            .stdin(Stdio::null());
        c
    }

    /// `safe-coder exec` against `server` with the given extra args.
    pub fn exec(&self, server: &MockServer, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.arg("exec").args(provider_args(server)).args(args);
        c.output().expect("run safe-coder")
    }
}

pub fn provider_name(wire: Wire) -> &'static str {
    match wire {
        Wire::Anthropic => "anthropic",
        Wire::OpenAi => "openai",
        Wire::Ollama => "ollama",
        // Only agent CLIs under `safe-coder run` (Codex) speak it to the mock server.
        Wire::Responses => panic!("Safe Coder has no provider for the Responses API"),
    }
}

pub fn provider_args(server: &MockServer) -> Vec<String> {
    vec![
        "--provider".into(),
        provider_name(server.wire()).into(),
        "--base-url".into(),
        server.base_url(),
        "--api-key".into(),
        "test-key-123456".into(),
        "--model".into(),
        "test-model".into(),
    ]
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "safe-coder failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

pub fn call(name: &str, input: Value) -> ToolCall {
    ToolCall::new(name, input)
}

/// Every tool result the server received, in order, as text.
pub fn tool_results(server: &MockServer) -> Vec<String> {
    let mut out = Vec::new();
    let Some(last) = server.model_requests().last().cloned() else {
        return out;
    };
    let messages = last
        .body
        .get("messages")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    for m in messages {
        // Anthropic: user content blocks of type tool_result.
        if let Some(blocks) = m.get("content").and_then(|c| c.as_array()) {
            for b in blocks {
                if b.get("type").and_then(|t| t.as_str()) == Some("tool_result") {
                    let content = match b.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                            .collect::<Vec<_>>()
                            .join(""),
                        _ => String::new(),
                    };
                    out.push(content);
                }
            }
        }
        // OpenAI and Ollama: role "tool" messages.
        if m.get("role").and_then(|r| r.as_str()) == Some("tool") {
            out.push(
                m.get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    out
}

/// The system prompt of a recorded request, in any wire format.
pub fn system_prompt(body: &Value) -> String {
    if let Some(s) = body.get("system") {
        return match s {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
    }
    body.get("messages")
        .and_then(|m| m.as_array())
        .and_then(|m| m.first())
        .filter(|m| m.get("role").and_then(|r| r.as_str()) == Some("system"))
        .and_then(|m| m.get("content").and_then(|c| c.as_str()))
        .unwrap_or("")
        .to_string()
}

/// The whole request body as text, for "does it contain" checks.
pub fn body_text(body: &Value) -> String {
    body.to_string()
}

/// The names of the tools offered in a request.
pub fn offered_tools(body: &Value) -> Vec<String> {
    body.get("tools")
        .and_then(|t| t.as_array())
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| {
                    t.get("name")
                        .or_else(|| t.get("function").and_then(|f| f.get("name")))
                        .and_then(|n| n.as_str())
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The standard multi-step scenario: write, read, edit, bash, final answer.
pub fn tool_scenario() -> Script {
    Script::new(vec![
        Reply::text_and_tool_calls(
            "I'll create the file.",
            vec![call(
                "write_file",
                json!({"path": "hello.txt", "content": "hello world\nsecond line\n"}),
            )],
        ),
        Reply::tool_calls(vec![call("read_file", json!({"path": "hello.txt"}))]),
        Reply::tool_calls(vec![call(
            "edit_file",
            json!({"path": "hello.txt", "old_string": "hello world", "new_string": "hello safe coder"}),
        )]),
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "cat hello.txt && echo done-bash"}),
        )]),
        Reply::text("All done: hello.txt now greets safe coder."),
    ])
}

/// Whether bubblewrap runs here. In CI (`SAFE_CODER_REQUIRE_SANDBOX=1`) a missing
/// sandbox fails the test instead of skipping it.
pub fn bwrap_available(test: &str) -> bool {
    // The process backend: bubblewrap, or the in-process fallback where CI hides it.
    let probe = safe_coder_sandbox::select::probe(safe_coder_sandbox::BackendKind::Process);
    if !probe.available {
        if std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some() {
            panic!(
                "{test}: the process backend does not run here ({}), and SAFE_CODER_REQUIRE_SANDBOX is set",
                probe.reason
            );
        }
        eprintln!(
            "skipping {test}: the process backend does not run here: {}",
            probe.reason
        );
        return false;
    }
    // CI says which confiner must run (`bubblewrap`, or `in-process` with it hidden).
    if let Ok(want) = std::env::var("SAFE_CODER_EXPECT_CONFINER") {
        assert!(
            probe.reason.starts_with(&format!("confiner: {want};")),
            "{test}: expected the {want} confiner: {}",
            probe.reason
        );
    }
    true
}

/// Every file under `dir` (relative path → bytes), for byte-identical comparisons.
pub fn snapshot_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            let ft = e.file_type().expect("ft");
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .expect("link")
                        .display()
                        .to_string()
                        .into_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// A tiny HTTP server on the host's loopback that answers every request with `body`
/// (the allowed and refused hosts of the network allow-list tests). Returns its port.
pub fn http_server(body: impl Into<Vec<u8>>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = std::sync::Arc::new(body.into());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            });
        }
    });
    port
}
