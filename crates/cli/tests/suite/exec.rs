//! `safe-coder exec` end to end, for each provider and each injected fault.

use safe_coder_test_support::{Fault, MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

fn scenario_for(wire: Wire) {
    let world = World::new();
    world.write("README.md", "# demo\n");
    let server = MockServer::start(wire, tool_scenario().with_noise(true)).expect("server");
    let out = world.exec(
        &server,
        &[
            "--backend",
            "copy",
            "--sync",
            "accept",
            "--approval-mode",
            "yolo",
            "make hello.txt",
        ],
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("All done: hello.txt now greets safe coder."),
        "{}",
        stdout(&out)
    );
    // The host got exactly the agent's file after the accepted sync.
    assert_eq!(
        world.read("hello.txt").as_deref(),
        Some("hello safe coder\nsecond line\n")
    );
    assert_eq!(world.read("README.md").as_deref(), Some("# demo\n"));

    let requests = server.model_requests();
    assert_eq!(requests.len(), 5, "one request per model turn");
    let results = tool_results(&server);
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(results[0].contains("Wrote"), "{}", results[0]);
    assert!(
        results[1].contains("hello world"),
        "read_file result: {}",
        results[1]
    );
    assert!(results[1].contains('1'), "numbered lines: {}", results[1]);
    assert!(
        results[2].to_lowercase().contains("replace"),
        "edit result: {}",
        results[2]
    );
    assert!(
        results[3].contains("hello safe coder") && results[3].contains("done-bash"),
        "bash: {}",
        results[3]
    );
    // The tools were offered with their exact names.
    let tools = offered_tools(&requests[0].body);
    for t in ["read_file", "write_file", "edit_file", "bash"] {
        assert!(tools.contains(&t.to_string()), "{t} offered: {tools:?}");
    }
}

#[test]
fn anthropic_multi_turn_tool_scenario() {
    scenario_for(Wire::Anthropic);
}

#[test]
fn openai_multi_turn_tool_scenario() {
    scenario_for(Wire::OpenAi);
}

#[test]
fn ollama_multi_turn_tool_scenario() {
    scenario_for(Wire::Ollama);
}

#[test]
fn json_mode_prints_one_event_per_line() {
    let world = World::new();
    let server = MockServer::start(Wire::Anthropic, tool_scenario()).expect("server");
    let out = world.exec(
        &server,
        &[
            "--json",
            "--backend",
            "copy",
            "--approval-mode",
            "yolo",
            "go",
        ],
    );
    assert_ok(&out);
    let mut types = Vec::new();
    let mut summaries = Vec::new();
    for line in stdout(&out).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        types.push(v["type"].as_str().expect("type").to_string());
        if v["type"] == "tool_call_started" {
            summaries.push(v["summary"].as_str().expect("summary").to_string());
        }
    }
    // Each tool's own one-line summary of its call, so consumers need not parse inputs.
    assert_eq!(
        summaries,
        [
            "hello.txt",
            "hello.txt",
            "hello.txt",
            "cat hello.txt && echo done-bash"
        ]
    );
    for t in [
        "session_started",
        "turn_started",
        "text_delta",
        "tool_call_started",
        "tool_call_finished",
        "committed",
        "turn_finished",
        "change_summary",
        "sync_finished",
    ] {
        assert!(types.iter().any(|x| x == t), "missing {t} in {types:?}");
    }
}

#[test]
fn retries_rate_limit_and_server_errors_then_succeeds() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::fault(Fault::RateLimited {
            retry_after_secs: 1,
        }),
        Reply::fault(Fault::ServerError { status: 500 }),
        Reply::fault(Fault::CutMidStream),
        Reply::text("recovered"),
    ]);
    let server = MockServer::start(Wire::OpenAi, script).expect("server");
    let out = world.exec(&server, &["--backend", "direct", "hi"]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), "recovered");
    assert_eq!(server.model_requests().len(), 4);
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));
}

#[test]
fn a_stream_cut_every_time_is_an_error_not_an_answer() {
    let world = World::new();
    let script = Script::new(
        (0..10)
            .map(|_| Reply::fault(Fault::TruncatedStream))
            .collect(),
    );
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(&server, &["--backend", "direct", "hi"]);
    assert!(!out.status.success(), "must fail: {}", stdout(&out));
    assert!(
        stdout(&out).trim().is_empty(),
        "no partial answer on stdout: {}",
        stdout(&out)
    );
}

#[test]
fn unauthorized_is_one_clear_sentence() {
    let world = World::new();
    let server = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::fault(Fault::Unauthorized)]),
    )
    .expect("server");
    let out = world.exec(&server, &["--backend", "direct", "hi"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("401") || err.to_lowercase().contains("api key"),
        "{err}"
    );
    assert!(
        !err.contains("test-key-123456"),
        "the key must never be printed: {err}"
    );
    // Each fatal error is printed once.
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(server.model_requests().len(), 1, "401 is not retried");
}

#[test]
fn unknown_model_names_the_fix() {
    let world = World::new();
    let server = MockServer::start(
        Wire::Ollama,
        Script::new(vec![Reply::fault(Fault::NotFoundModel)]),
    )
    .expect("server");
    let out = world.exec(&server, &["--backend", "direct", "hi"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("model"), "{err}");
}

#[test]
fn malformed_json_and_unknown_events_do_not_crash() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::fault(Fault::MalformedJson),
        Reply::text("fine"),
    ])
    .with_noise(true);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(&server, &["--backend", "direct", "hi"]);
    // A malformed event is either retried (and then succeeds) or one clear error.
    if out.status.success() {
        assert_eq!(stdout(&out).trim(), "fine");
    } else {
        assert!(!stderr(&out).is_empty());
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn path_escapes_are_refused_and_reported_to_the_model() {
    let world = World::new();
    let outside = world.root.path().join("outside.txt");
    std::fs::write(&outside, "secret outside").expect("write");
    std::os::unix::fs::symlink(&outside, world.project.join("link")).expect("symlink");
    let script = Script::new(vec![
        Reply::tool_calls(vec![
            call("read_file", json!({"path": "../outside.txt"})),
            call("read_file", json!({"path": outside.display().to_string()})),
            call("read_file", json!({"path": "link"})),
            call(
                "write_file",
                json!({"path": "../escape.txt", "content": "x"}),
            ),
        ]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "direct", "--approval-mode", "yolo", "try"],
    );
    assert_ok(&out);
    let results = tool_results(&server);
    assert_eq!(results.len(), 4);
    for r in &results {
        assert!(!r.contains("secret outside"), "leaked: {r}");
        let r = r.to_lowercase();
        assert!(
            r.contains("outside") || r.contains("leaves the project root"),
            "refusal explains: {r}"
        );
    }
    assert!(!world.root.path().join("escape.txt").exists());
}

#[test]
fn agent_bash_does_not_see_api_keys() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": "echo \"A=${ANTHROPIC_API_KEY:-unset} O=${OPENAI_API_KEY:-unset}\"; env | grep -c _API_KEY || true"}),
        )]),
        Reply::text("ok"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let mut c = world.cmd();
    c.env("ANTHROPIC_API_KEY", "sk-ant-supersecret-value")
        .env("OPENAI_API_KEY", "sk-openai-supersecret");
    c.args([
        "exec",
        "--provider",
        "anthropic",
        "--base-url",
        &server.base_url(),
        "--model",
        "m",
    ]);
    c.args(["--backend", "direct", "--approval-mode", "yolo", "show env"]);
    let out = c.output().expect("run");
    assert_ok(&out);
    let results = tool_results(&server);
    assert!(results[0].contains("A=unset O=unset"), "{}", results[0]);
    assert!(!results[0].contains("supersecret"));
    // The key from the environment did reach the API, as a header.
    assert_eq!(
        server.model_requests()[0].header("x-api-key"),
        Some("sk-ant-supersecret-value")
    );
}

#[test]
fn headless_run_on_direct_refuses_what_needs_asking_and_exits_non_zero() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "write_file",
            json!({"path": "a.txt", "content": "x"}),
        )]),
        Reply::text("could not write"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(&server, &["--backend", "direct", "write a"]);
    assert!(!out.status.success(), "a refused run must not exit 0");
    let results = tool_results(&server);
    assert!(results[0].contains("approval"), "{}", results[0]);
    assert!(!world.project.join("a.txt").exists());
    // One line that names the flag to add.
    let err = stderr(&out);
    let summary: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(summary.len(), 1, "{err}");
    assert!(summary[0].contains("--approval-mode auto-edit"), "{err}");
}

#[test]
fn headless_run_on_a_sandbox_lets_the_agent_work_without_a_mode_flag() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![
            call("write_file", json!({"path": "a.txt", "content": "x\n"})),
            call("bash", json!({"command": "echo ran > b.txt"})),
        ]),
        Reply::text("wrote a and b"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "copy", "--sync", "accept", "write a"],
    );
    assert_ok(&out);
    assert_eq!(world.read("a.txt").as_deref(), Some("x\n"));
    assert_eq!(world.read("b.txt").as_deref(), Some("ran\n"));
}

#[test]
fn plan_mode_offers_only_read_only_tools() {
    let world = World::new();
    let server = MockServer::start(Wire::OpenAi, Script::new(vec![Reply::text("plan: do X")]))
        .expect("server");
    let out = world.exec(
        &server,
        &["--backend", "direct", "--approval-mode", "plan", "plan it"],
    );
    assert_ok(&out);
    let body = &server.model_requests()[0].body;
    let tools = offered_tools(body);
    assert_eq!(tools, vec!["read_file".to_string()]);
    assert!(system_prompt(body).contains("PLAN MODE"));
}

#[test]
fn max_turns_guard_stops_a_looping_model() {
    let world = World::new();
    std::fs::create_dir_all(world.project.join(".safe-coder")).expect("dir");
    world.write(".safe-coder/config.toml", "[agent]\nmax_turns = 3\n");
    let replies = (0..6)
        .map(|_| {
            Reply::tool_calls(vec![call(
                "read_file",
                json!({"path": ".safe-coder/config.toml"}),
            )])
        })
        .collect();
    let server = MockServer::start(Wire::Anthropic, Script::new(replies)).expect("server");
    let out = world.exec(&server, &["--backend", "direct", "loop"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("max_turns"), "{}", stderr(&out));
    assert_eq!(server.model_requests().len(), 3);
}

#[test]
fn version_is_quick_to_answer() {
    let world = World::new();
    let out = world.cmd().arg("--version").output().expect("run");
    assert_ok(&out);
    assert!(stdout(&out).starts_with("safe-coder "));
}

#[test]
fn invalid_tool_arguments_go_back_to_the_model_as_an_error() {
    let world = World::new();
    let script = Script::new(vec![
        Reply::tool_calls(vec![safe_coder_test_support::ToolCall::raw(
            "write_file",
            "{\"path\": \"a.txt\", \"content\": ",
        )]),
        Reply::text("sorry"),
    ]);
    let server = MockServer::start(Wire::OpenAi, script).expect("server");
    let out = world.exec(
        &server,
        &["--backend", "direct", "--approval-mode", "yolo", "write"],
    );
    assert_ok(&out);
    let results = tool_results(&server);
    assert!(results[0].contains("not valid JSON"), "{}", results[0]);
    assert!(!world.project.join("a.txt").exists());
}

#[test]
fn sigterm_cancels_and_kills_the_running_tool() {
    let world = World::new();
    let marker = format!("300.{}", std::process::id());
    let script = Script::new(vec![
        Reply::tool_calls(vec![call(
            "bash",
            json!({"command": format!("(sleep {marker} &); sleep {marker}")}),
        )]),
        Reply::text("never"),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let mut c = world.cmd();
    c.arg("exec").args(provider_args(&server)).args([
        "--backend",
        "copy",
        "--approval-mode",
        "yolo",
        "sleep",
    ]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("spawn");
    let sleeping = || {
        std::fs::read_dir("/proc")
            .expect("proc")
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sleeping() {
        assert!(
            std::time::Instant::now() < deadline,
            "the tool never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !sleeping(),
        "the tool's process group was killed, grandchild included"
    );
    // The work so far is kept in the session.
    assert!(stderr(&out).contains("session"), "{}", stderr(&out));
}

#[test]
fn a_missing_api_key_is_one_error_and_creates_no_session() {
    let world = World::new();
    let out = world
        .cmd()
        .args(["exec", "--backend", "copy", "--provider", "openai", "hi"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!world.data_dir().join("sessions").exists());
}
