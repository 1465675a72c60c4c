//! Frame time with a long conversation, and resident memory with a very long one.
//!
//! `cargo bench -p safe-coder-tui --bench render`

use std::time::Instant;

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use safe_coder_protocol::{ApprovalMode, Event, SandboxState, SandboxStatus, ToolOutcome};
use safe_coder_tui::{draw, App, Theme, TuiConfig, UiInput};
use serde_json::json;

const ANSWER: &str = "Here is the change, with **bold** and `code`:\n\n- first point of the list\n- second point, a little longer so that it wraps at narrower widths\n\n```rust\nfn main() {\n    let x = 42; // answer\n    println!(\"{x}\");\n}\n```\n\nDone.";

fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn app_with(messages: usize) -> App {
    let mut app = App::new(TuiConfig {
        project: "/home/user/project".into(),
        theme: Theme::Cyberpunk,
        approval_mode: ApprovalMode::Default,
        provider: "anthropic".into(),
        model: "claude".into(),
    });
    app.handle_input(UiInput::Status(SandboxStatus {
        backend: "process".into(),
        state: SandboxState::Running,
        uptime_secs: 100,
        memory_limit_mb: Some(512),
        cpus: Some(2.0),
        memory_used_mb: Some(40),
        cpu_percent: Some(3.0),
    }));
    let mut n = 0;
    let mut turn = 0;
    while n < messages {
        turn += 1;
        for c in format!("question number {turn}: please fix the bug").chars() {
            app.handle_key(crossterm::event::KeyEvent::from(
                crossterm::event::KeyCode::Char(c),
            ));
        }
        app.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Enter,
        ));
        app.handle_input(UiInput::Event(Event::TurnStarted));
        app.handle_input(UiInput::Event(Event::TextDelta {
            text: ANSWER.into(),
        }));
        app.handle_input(UiInput::Event(Event::AssistantMessage {
            text: ANSWER.into(),
        }));
        let id = format!("t{turn}");
        app.handle_input(UiInput::Event(Event::ToolCallStarted {
            id: id.clone(),
            name: "bash".into(),
            input: json!({"command": "cargo test"}),
            summary: "cargo test".into(),
        }));
        app.handle_input(UiInput::Event(Event::ToolCallFinished {
            id,
            name: "bash".into(),
            outcome: ToolOutcome::Ok,
            output:
                "running 3 tests\ntest a ... ok\ntest b ... ok\ntest c ... ok\n\ntest result: ok"
                    .into(),
            duration_ms: 1234,
        }));
        app.handle_input(UiInput::Event(Event::TurnFinished {
            text: ANSWER.into(),
            truncated: false,
        }));
        n += 3;
    }
    app
}

fn main() {
    // --- frame time, 1,000 messages, 120x40 ---
    let mut app = app_with(1000);
    let mut term = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
    let t = Instant::now();
    term.draw(|f| draw(f, &app)).expect("draw");
    let cold = t.elapsed();
    let frames = 500;
    let t = Instant::now();
    for _ in 0..frames {
        app.tick();
        term.draw(|f| draw(f, &app)).expect("draw");
    }
    let warm = t.elapsed() / frames;
    // A streaming frame: the last message changes before every draw.
    app.handle_input(UiInput::Event(Event::TurnStarted));
    let t = Instant::now();
    for i in 0..frames {
        app.handle_input(UiInput::Event(Event::TextDelta {
            text: format!("word{i} "),
        }));
        term.draw(|f| draw(f, &app)).expect("draw");
    }
    let streaming = t.elapsed() / frames;
    // A keystroke: handling it and drawing the frame that shows it.
    let t = Instant::now();
    for i in 0..frames {
        let c = char::from(b'a' + (i % 26) as u8);
        app.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Char(c),
        ));
        term.draw(|f| draw(f, &app)).expect("draw");
    }
    let keystroke = t.elapsed() / frames;
    // Scrolled to the top: every message gets rendered once, then cached.
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Home,
    ));
    let t = Instant::now();
    term.draw(|f| draw(f, &app)).expect("draw");
    let top = t.elapsed();
    println!("frame, 1,000 messages, 120x40:");
    println!(
        "  first frame (cold cache):   {:>8.3} ms",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "  steady frame (warm cache):  {:>8.3} ms  (target <= 2 ms)",
        warm.as_secs_f64() * 1e3
    );
    println!(
        "  streaming frame:            {:>8.3} ms",
        streaming.as_secs_f64() * 1e3
    );
    println!(
        "  keystroke to frame:         {:>8.3} ms  (target <= 16 ms)",
        keystroke.as_secs_f64() * 1e3
    );
    println!(
        "  jump to top (renders all):  {:>8.3} ms",
        top.as_secs_f64() * 1e3
    );
    drop(app);
    drop(term);

    // --- resident memory, 10,000 messages ---
    let before = vm_rss_kb();
    let mut app = app_with(10_000);
    let mut term = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
    term.draw(|f| draw(f, &app)).expect("draw");
    let after_bottom = vm_rss_kb();
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Home,
    ));
    term.draw(|f| draw(f, &app)).expect("draw");
    let after_all = vm_rss_kb();
    println!("memory, 10,000 messages:");
    println!(
        "  VmRSS before building:       {:>8.1} MB",
        before as f64 / 1024.0
    );
    println!(
        "  VmRSS, bottom view drawn:    {:>8.1} MB  (target <= 50 MB)",
        after_bottom as f64 / 1024.0
    );
    println!(
        "  VmRSS, every message drawn:  {:>8.1} MB",
        after_all as f64 / 1024.0
    );
    println!("  entries: {}", app.entry_count());
}
