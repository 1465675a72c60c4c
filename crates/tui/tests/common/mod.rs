#![allow(dead_code)]
use std::collections::HashMap;

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use safe_coder_protocol::{
    ApprovalMode, ApprovalRequest, ApprovalSubject, ChangeKind, ChangeSet, Effect, Event,
    FileChange, SandboxState, SandboxStatus, ToolOutcome,
};
use safe_coder_tui::{draw, App, ReviewData, Theme, TuiConfig, UiInput};
use serde_json::json;

pub fn config(theme: Theme) -> TuiConfig {
    TuiConfig {
        project: "/home/user/my-project".into(),
        theme,
        approval_mode: ApprovalMode::Default,
        provider: "anthropic".into(),
        model: "claude-sonnet".into(),
    }
}

pub fn app(theme: Theme) -> App {
    let mut app = App::new(config(theme));
    app.freeze_clock("12:30:45");
    app
}

pub fn render(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| draw(f, app)).expect("draw");
    t
}

pub fn screen(app: &App, w: u16, h: u16) -> String {
    render(app, w, h).backend().to_string()
}

pub fn ev(app: &mut App, e: Event) {
    app.handle_input(UiInput::Event(e));
}

pub fn status() -> SandboxStatus {
    SandboxStatus {
        backend: "process".into(),
        state: SandboxState::Running,
        uptime_secs: 323,
        memory_limit_mb: Some(512),
        cpus: Some(2.0),
        memory_used_mb: Some(87),
        cpu_percent: Some(12.5),
    }
}

pub const ANSWER: &str = "## Plan\n\nI'll create **hello.rs** with a `main` function:\n\n1. write the file\n2. compile it with *rustc*\n\n```rust\nfn main() {\n    // greet\n    println!(\"Hello, World!\");\n}\n```\n\nThen run `./hello`.";

/// A session with one exchange and a finished tool.
pub fn conversation(app: &mut App) {
    app.handle_input(UiInput::Status(status()));
    type_text(app, "Create hello.rs");
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Enter,
    ));
    ev(app, Event::TurnStarted);
    for chunk in ANSWER.as_bytes().chunks(17) {
        ev(
            app,
            Event::TextDelta {
                text: String::from_utf8_lossy(chunk).into_owned(),
            },
        );
    }
    ev(
        app,
        Event::AssistantMessage {
            text: ANSWER.into(),
        },
    );
    ev(
        app,
        Event::ToolCallStarted {
            id: "t1".into(),
            name: "write_file".into(),
            input: json!({"path": "hello.rs", "content": "fn main() {}"}),
            summary: "hello.rs".into(),
        },
    );
    ev(
        app,
        Event::ToolCallFinished {
            id: "t1".into(),
            name: "write_file".into(),
            outcome: ToolOutcome::Ok,
            output: "Wrote 4 lines to hello.rs".into(),
            duration_ms: 12,
        },
    );
}

/// Types `s` into the input (no Enter).
pub fn type_text(app: &mut App, s: &str) {
    for c in s.chars() {
        app.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Char(c),
        ));
    }
}

pub fn edit_request() -> ApprovalRequest {
    ApprovalRequest {
        tool_call_id: "t2".into(),
        tool_name: "edit_file".into(),
        effect: Effect::WritesFiles,
        subject: ApprovalSubject::FileChange {
            path: "src/main.rs".into(),
            diff: "--- a/src/main.rs\n+++ b/src/main.rs\n@@ -1,3 +1,4 @@\n fn main() {\n-    println!(\"hi\");\n+    let name = \"world\";\n+    println!(\"hello {name}\");\n }\n".into(),
        },
    }
}

pub fn bash_request() -> ApprovalRequest {
    ApprovalRequest {
        tool_call_id: "t3".into(),
        tool_name: "bash".into(),
        effect: Effect::RunsCommands,
        subject: ApprovalSubject::Command {
            command: "cargo test --workspace && rm -rf target/tmp".into(),
        },
    }
}

pub fn review(conflict: bool) -> ReviewData {
    let files = vec![
        FileChange {
            path: "src/main.rs".into(),
            kind: ChangeKind::Modified,
            executable: false,
            additions: 2,
            deletions: 1,
            conflict: false,
            conflict_reason: None,
            steers_next_session: false,
            is_symlink: false,
        },
        FileChange {
            path: "hello.rs".into(),
            kind: ChangeKind::Added,
            executable: false,
            additions: 3,
            deletions: 0,
            conflict,
            conflict_reason: None,
            steers_next_session: false,
            is_symlink: false,
        },
        FileChange {
            path: "old.txt".into(),
            kind: ChangeKind::Deleted,
            executable: false,
            additions: 0,
            deletions: 2,
            conflict: false,
            conflict_reason: None,
            steers_next_session: false,
            is_symlink: false,
        },
    ];
    let mut diffs = HashMap::new();
    diffs.insert(
        "src/main.rs".to_string(),
        "--- a/src/main.rs\n+++ b/src/main.rs\n@@ -1,3 +1,4 @@\n fn main() {\n-    println!(\"hi\");\n+    let name = \"world\";\n+    println!(\"hello {name}\");\n }\n".to_string(),
    );
    diffs.insert(
        "hello.rs".to_string(),
        "--- /dev/null\n+++ b/hello.rs\n@@ -0,0 +1,3 @@\n+fn main() {\n+    println!(\"Hello, World!\");\n+}\n".to_string(),
    );
    diffs.insert(
        "old.txt".to_string(),
        "--- a/old.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-line one\n-line two\n".to_string(),
    );
    ReviewData {
        changes: ChangeSet {
            files,
            ..Default::default()
        },
        diffs,
    }
}
