//! Runs the real UI fed by a scripted fake session, to try the TUI by hand:
//!
//! `cargo run -p safe-coder-tui --example demo`
//!
//! Type anything and press Enter: a scripted answer streams in, a tool runs, an edit
//! asks for approval. Ctrl+C when idle opens the review screen, then the sync result.

use std::collections::HashMap;
use std::time::Duration;

use safe_coder_protocol::{
    ApprovalDecision, ApprovalMode, ApprovalRequest, ApprovalSubject, ChangeKind, ChangeSet,
    Effect, Event, FileChange, SandboxState, SandboxStatus, ToolOutcome,
};
use safe_coder_tui::{run, ReviewData, Theme, TuiConfig, UiAction, UiInput};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const ANSWER: &str = "## Plan\n\nI'll create **hello.rs** with a `main` function, then compile it:\n\n1. write the file\n2. run `rustc hello.rs`\n\n```rust\nfn main() {\n    // greet the world\n    let name = \"World\";\n    println!(\"Hello, {name}!\");\n}\n```\n";

const DIFF: &str = "--- a/hello.rs\n+++ b/hello.rs\n@@ -1,3 +1,4 @@\n fn main() {\n-    println!(\"hi\");\n+    let name = \"World\";\n+    println!(\"Hello, {name}!\");\n }\n";

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let (in_tx, in_rx) = unbounded_channel();
    let (act_tx, act_rx) = unbounded_channel();
    let config = TuiConfig {
        project: std::env::current_dir()?.display().to_string(),
        theme: if std::env::args().any(|a| a == "--plain") {
            Theme::Plain
        } else {
            Theme::Cyberpunk
        },
        approval_mode: ApprovalMode::Default,
        provider: "mock".into(),
        model: "demo-model".into(),
    };
    tokio::spawn(status_feed(in_tx.clone()));
    tokio::spawn(fake_lead(in_tx, act_rx));
    run(config, in_rx, act_tx).await
}

async fn status_feed(tx: UnboundedSender<UiInput>) {
    let mut up = 0u64;
    loop {
        let s = SandboxStatus {
            backend: "process".into(),
            state: SandboxState::Running,
            uptime_secs: up,
            memory_limit_mb: Some(512),
            cpus: Some(2.0),
            memory_used_mb: Some(40 + up % 7),
            cpu_percent: Some((up % 10) as f64 * 1.5),
        };
        if tx.send(UiInput::Status(s)).is_err() {
            return;
        }
        up += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn fake_lead(tx: UnboundedSender<UiInput>, mut rx: UnboundedReceiver<UiAction>) {
    let send = |e: Event| {
        let _ = tx.send(UiInput::Event(e));
    };
    send(Event::SessionStarted {
        session_id: "demo".into(),
        project: String::new(),
        backend: "process".into(),
        note: "demo script".into(),
        provider: "mock".into(),
        model: "demo-model".into(),
        approval_mode: safe_coder_protocol::ApprovalMode::Default,
        resumed_messages: 0,
    });
    let mut turn = 0;
    while let Some(action) = rx.recv().await {
        match action {
            UiAction::Submit(_) => {
                turn += 1;
                send(Event::TurnStarted);
                tokio::time::sleep(Duration::from_millis(600)).await;
                for chunk in ANSWER.as_bytes().chunks(6) {
                    send(Event::TextDelta {
                        text: String::from_utf8_lossy(chunk).into_owned(),
                    });
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                send(Event::AssistantMessage {
                    text: ANSWER.into(),
                });
                let id = format!("w{turn}");
                send(Event::ToolCallStarted {
                    id: id.clone(),
                    name: "edit_file".into(),
                    input: json!({"path": "hello.rs"}),
                    summary: "hello.rs".into(),
                });
                let _ = tx.send(UiInput::Approval(ApprovalRequest {
                    tool_call_id: id.clone(),
                    tool_name: "edit_file".into(),
                    effect: Effect::WritesFiles,
                    subject: ApprovalSubject::FileChange {
                        path: "hello.rs".into(),
                        diff: DIFF.into(),
                    },
                }));
                let decision = loop {
                    match rx.recv().await {
                        Some(UiAction::Approval { decision, .. }) => break Some(decision),
                        Some(UiAction::Cancel) | None => break None,
                        Some(_) => {}
                    }
                };
                let Some(decision) = decision else {
                    send(Event::TurnCancelled);
                    continue;
                };
                let ok = matches!(
                    decision,
                    ApprovalDecision::Approve | ApprovalDecision::ApproveAlwaysForTool
                );
                send(Event::ToolCallFinished {
                    id,
                    name: "edit_file".into(),
                    outcome: if ok {
                        ToolOutcome::Ok
                    } else {
                        ToolOutcome::Denied
                    },
                    output: if ok {
                        "Edited hello.rs".into()
                    } else {
                        "refused".into()
                    },
                    duration_ms: 8,
                });
                let id = format!("b{turn}");
                send(Event::ToolCallStarted {
                    id: id.clone(),
                    name: "bash".into(),
                    input: json!({"command": "rustc hello.rs && ./hello"}),
                    summary: "rustc hello.rs && ./hello".into(),
                });
                tokio::time::sleep(Duration::from_millis(1500)).await;
                send(Event::ToolCallFinished {
                    id,
                    name: "bash".into(),
                    outcome: ToolOutcome::Ok,
                    output: "Hello, World!\nline 2\nline 3\nline 4\nline 5\nline 6".into(),
                    duration_ms: 1500,
                });
                send(Event::TextDelta {
                    text: "Done: `hello.rs` prints the greeting.".into(),
                });
                send(Event::TurnFinished {
                    text: "Done: `hello.rs` prints the greeting.".into(),
                    truncated: false,
                });
            }
            UiAction::Cancel => send(Event::TurnCancelled),
            UiAction::CycleApprovalMode => {}
            UiAction::Quit => {
                let mut diffs = HashMap::new();
                diffs.insert("hello.rs".to_string(), DIFF.to_string());
                let _ = tx.send(UiInput::Review(ReviewData {
                    changes: ChangeSet {
                        files: vec![
                            FileChange {
                                path: "hello.rs".into(),
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
                                path: "README.md".into(),
                                kind: ChangeKind::Modified,
                                executable: false,
                                additions: 1,
                                deletions: 0,
                                conflict: true,
                                conflict_reason: None,
                                steers_next_session: false,
                                is_symlink: false,
                            },
                        ],
                        ..Default::default()
                    },
                    diffs,
                }));
            }
            UiAction::Review(paths) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tx.send(UiInput::SyncResult(format!(
                    "Synced {} file(s): {}",
                    paths.len(),
                    paths.join(", ")
                )));
            }
            UiAction::KeepForLater => {
                let _ = tx.send(UiInput::SyncResult(
                    "Nothing synced; the changes stay in the session.".into(),
                ));
            }
            UiAction::RequestCompletions(text) => {
                let word = text.rsplit(' ').next().unwrap_or("").to_string();
                let all = [
                    "@hello.rs",
                    "@src/main.rs",
                    "@src/lib.rs",
                    "/help",
                    "/sync",
                    "/diff",
                ];
                let found: Vec<String> = all
                    .iter()
                    .filter(|c| c.starts_with(&word))
                    .map(|c| c.to_string())
                    .collect();
                let _ = tx.send(UiInput::Completions(found));
            }
            UiAction::Approval { .. } => {}
        }
    }
}
