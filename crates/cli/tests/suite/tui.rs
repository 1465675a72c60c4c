//! The TUI end to end in a real terminal: tmux runs the real binary against the mock
//! model server; we type, read the screen, approve an edit, quit, accept in review and
//! find the file changed on the host.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use safe_coder_test_support::{Fault, MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

/// Each test's tmux server gets its own socket.
static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `safe-coder ARGS` in a 120×36 tmux pane with this world's HOME; the pane
    /// stays a few seconds after the binary exits, so what it printed can be read.
    fn start(world: &World, args: &[String]) -> Tmux {
        let tmux = Tmux {
            socket: format!(
                "safe-coder-e2e-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let command = format!(
            "{} {}; sleep 5",
            env!("CARGO_BIN_EXE_safe-coder"),
            args.join(" ")
        );
        let home = format!("HOME={}", world.home.display());
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            "120",
            "-y",
            "36",
            "-e",
            &home,
            "-e",
            "TERM=xterm-256color",
            &command,
        ]);
        tmux
    }

    fn available(test: &str) -> bool {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            if std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some() {
                panic!("{test}: tmux is missing, and SAFE_CODER_REQUIRE_SANDBOX is set");
            }
            eprintln!("skipping {test}: tmux is not installed");
        }
        ok
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "e2e"])
    }

    /// Waits until the screen shows `text`; panics with the screen after 30 s.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {text:?}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "e2e"];
        args.extend_from_slice(keys);
        self.run(&args);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn tui_prompt_stream_approve_quit_review_sync() {
    if !Tmux::available("tui_prompt_stream_approve_quit_review_sync") {
        return;
    }
    let world = World::new();
    world.write("main.rs", "fn main() {}\n");
    let script = Script::new(vec![
        Reply::text_and_tool_calls(
            "Let me **edit** the file.",
            vec![call("edit_file", json!({"path": "main.rs", "old_string": "fn main() {}", "new_string": "fn main() { println!(\"hi\"); }"}))],
        ),
        Reply::text("Done! I changed `main.rs` to print hi."),
    ])
    .with_chunk_delay_ms(2);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let tmux = Tmux {
        socket: format!("safe-coder-e2e-{}", std::process::id()),
    };
    let command = format!(
        "{bin} chat --path {project} --backend copy --provider anthropic --base-url {url} --api-key k-123456789 --model test-model; sleep 5",
        bin = env!("CARGO_BIN_EXE_safe-coder"),
        project = world.project.display(),
        url = server.base_url(),
    );
    let home = format!("HOME={}", world.home.display());
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "e2e",
        "-x",
        "120",
        "-y",
        "36",
        "-e",
        &home,
        "-e",
        "TERM=xterm-256color",
        &command,
    ]);

    tmux.wait_for("Type a message");
    tmux.keys(&["make main print hi", "Enter"]);
    let screen = tmux.wait_for("Approval required");
    assert!(
        screen.contains("+fn main() { println!(\"hi\"); }"),
        "the dialog shows the diff:\n{screen}"
    );
    assert_eq!(world.read("main.rs").as_deref(), Some("fn main() {}\n"));
    tmux.keys(&["y"]);
    let screen = tmux.wait_for("Done! I changed");
    assert!(screen.contains("edit_file"), "{screen}");
    // The host is untouched until review.
    assert_eq!(world.read("main.rs").as_deref(), Some("fn main() {}\n"));
    tmux.wait_for("Ready");
    tmux.keys(&["C-c"]);
    let screen = tmux.wait_for("Review changes");
    assert!(screen.contains("main.rs"), "{screen}");
    tmux.keys(&["Enter"]);
    tmux.wait_for("Changes synced to host");
    assert_eq!(
        world.read("main.rs").as_deref(),
        Some("fn main() { println!(\"hi\"); }\n")
    );
    tmux.keys(&["q"]);
}

/// `chat` (the TUI) on the copy backend against `server`, plus `extra` arguments.
fn chat_args(world: &World, server: &MockServer, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "chat".into(),
        "--path".into(),
        world.project.display().to_string(),
        "--backend".into(),
        "copy".into(),
        "--provider".into(),
        "anthropic".into(),
        "--base-url".into(),
        server.base_url(),
        "--api-key".into(),
        "k-123456789".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn tui_model_error_leaves_a_working_input_line_and_ctrl_c_quits() {
    if !Tmux::available("tui_model_error_leaves_a_working_input_line_and_ctrl_c_quits") {
        return;
    }
    let world = World::new();
    let script = Script::new(vec![
        Reply::fault(Fault::Unauthorized),
        Reply::text("The second try works."),
    ]);
    let server = MockServer::start(Wire::Anthropic, script).expect("server");
    let tmux = Tmux::start(&world, &chat_args(&world, &server, &["--model", "m"]));
    tmux.wait_for("Type a message");
    tmux.keys(&["first try", "Enter"]);
    tmux.wait_for("rejected the API key");
    // The turn is over: the footer leaves "Thinking…", the input line takes a prompt.
    let screen = tmux.wait_for("● Ready");
    assert!(!screen.contains("Thinking…"), "{screen}");
    tmux.keys(&["second try", "Enter"]);
    tmux.wait_for("The second try works.");
    tmux.wait_for("● Ready");
    // Idle, Ctrl+C ends the session (nothing changed, so no review).
    tmux.keys(&["C-c"]);
    tmux.wait_for("No changes.");
    tmux.keys(&["q"]);
    // Back on the shell: the session id and the sync result.
    let screen = tmux.wait_for("nothing unsynced remains");
    assert!(screen.contains("No changes."), "{screen}");
    assert_eq!(server.model_requests().len(), 2);
}

#[test]
fn tui_resume_shows_the_conversation_and_restores_model_and_mode() {
    if !Tmux::available("tui_resume_shows_the_conversation_and_restores_model_and_mode") {
        return;
    }
    let world = World::new();
    // First, a line-mode session on model-one in auto-edit, its work kept for later.
    let first = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![
            Reply::tool_calls(vec![call(
                "write_file",
                json!({"path": "notes.txt", "content": "pineapple\n"}),
            )]),
            Reply::text("Noted: pineapple."),
        ]),
    )
    .expect("server");
    let mut c = world.cmd();
    c.args(["chat", "--no-tui", "--backend", "copy"])
        .args(provider_args(&first).iter().take(6))
        .args(["--model", "model-one", "--approval-mode", "auto-edit"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        b"remember the word pineapple\nexit\nk\n",
    )
    .expect("type");
    let out = child.wait_with_output().expect("wait");
    assert_ok(&out);

    // Then the TUI resumes it, with no model and no approval mode on the command line.
    let second = MockServer::start(
        Wire::Anthropic,
        Script::new(vec![Reply::text("The word was pineapple.")]),
    )
    .expect("server");
    let tmux = Tmux::start(&world, &chat_args(&world, &second, &["--resume"]));
    let screen = tmux.wait_for("Resumed with 3 message(s)");
    for shown in [
        "remember the word pineapple",
        "Noted: pineapple.",
        "notes.txt",
        "anthropic/model-one",
        "auto-edit",
    ] {
        assert!(screen.contains(shown), "{shown} is shown:\n{screen}");
    }
    // `/stats` counts the same messages.
    tmux.keys(&["/stats", "Enter"]);
    tmux.wait_for("Messages: 3 (1 from you, 2 from the assistant)");
    tmux.keys(&["what was the word?", "Enter"]);
    tmux.wait_for("The word was pineapple.");
    let request = second.model_requests().last().cloned().expect("a request");
    assert_eq!(request.body["model"].as_str(), Some("model-one"));
    assert!(body_text(&request.body).contains("remember the word pineapple"));
    // `/quit` ends it; the review keeps the work for later (Esc).
    tmux.wait_for("● Ready");
    tmux.keys(&["/quit", "Enter"]);
    tmux.wait_for("Review changes");
    tmux.keys(&["Escape"]);
    tmux.wait_for("Changes kept in session");
    tmux.keys(&["q"]);
    tmux.wait_for("keeps unsynced work");
    assert!(world.read("notes.txt").is_none(), "the host is untouched");
}

#[test]
fn tui_shell_command_spins_cancels_and_shows_its_exit_status() {
    if !Tmux::available("tui_shell_command_spins_cancels_and_shows_its_exit_status") {
        return;
    }
    let world = World::new();
    let server = MockServer::start(Wire::Anthropic, Script::new(vec![])).expect("server");
    let tmux = Tmux::start(&world, &chat_args(&world, &server, &["--model", "m"]));
    tmux.wait_for("Type a message");
    tmux.keys(&["!sleep 600", "Enter"]);
    tmux.wait_for("Running !sleep 600…");
    tmux.keys(&["C-c"]);
    tmux.wait_for("(cancelled)");
    tmux.wait_for("● Ready");
    tmux.keys(&["!true", "Enter"]);
    tmux.wait_for("(no output, exit code 0)");
    tmux.keys(&["!exit 3", "Enter"]);
    tmux.wait_for("(exit code 3)");
    tmux.wait_for("● Ready");
    tmux.keys(&["C-c"]);
    tmux.wait_for("No changes.");
    tmux.keys(&["q"]);
    tmux.wait_for("nothing unsynced remains");
    assert!(server.model_requests().is_empty());
}

#[test]
fn tui_unreachable_url_fails_the_turn_and_quit_still_works() {
    if !Tmux::available("tui_unreachable_url_fails_the_turn_and_quit_still_works") {
        return;
    }
    let world = World::new();
    // A port nothing listens on: every attempt is refused, then the turn fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let args: Vec<String> = [
        "chat",
        "--path",
        &world.project.display().to_string(),
        "--backend",
        "copy",
        "--provider",
        "anthropic",
        "--base-url",
        &url,
        "--api-key",
        "k-123456789",
        "--model",
        "m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tmux = Tmux::start(&world, &args);
    tmux.wait_for("Type a message");
    tmux.keys(&["hello", "Enter"]);
    tmux.wait_for("could not reach the anthropic API");
    let screen = tmux.wait_for("● Ready");
    assert!(!screen.contains("Cancelling…"), "{screen}");
    tmux.keys(&["/quit", "Enter"]);
    tmux.wait_for("No changes.");
    tmux.keys(&["q"]);
    tmux.wait_for("nothing unsynced remains");
}
