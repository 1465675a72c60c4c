//! The TUI end to end in a real terminal: tmux runs the real binary against the mock
//! model server; we type, read the screen, approve an edit, quit, accept in review and
//! find the file changed on the host.

use std::process::Command;
use std::time::{Duration, Instant};

use safe_coder_test_support::{MockServer, Reply, Script, Wire};
use serde_json::json;

use crate::common::*;

struct Tmux {
    socket: String,
}

impl Tmux {
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
