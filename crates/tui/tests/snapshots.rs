//! Snapshot tests of every screen (ratatui TestBackend + insta).

mod common;

use common::*;
use ratatui::style::Color;
use safe_coder_protocol::Event;
use safe_coder_tui::{Theme, UiInput};
use serde_json::json;

#[test]
fn empty_session() {
    let app = app(Theme::Cyberpunk);
    insta::assert_snapshot!(screen(&app, 120, 30));
}

#[test]
fn streaming_answer() {
    let mut app = app(Theme::Cyberpunk);
    app.handle_input(UiInput::Status(status()));
    type_text(&mut app, "Create hello.rs");
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Enter,
    ));
    ev(&mut app, Event::TurnStarted);
    // Half of the answer has arrived: the code block is still open.
    let half = &ANSWER[..ANSWER.find("println").expect("code in answer")];
    for chunk in half.as_bytes().chunks(9) {
        ev(
            &mut app,
            Event::TextDelta {
                text: String::from_utf8_lossy(chunk).into_owned(),
            },
        );
    }
    insta::assert_snapshot!(screen(&app, 120, 34));
}

#[test]
fn tool_running() {
    let mut app = app(Theme::Cyberpunk);
    conversation(&mut app);
    ev(
        &mut app,
        Event::ToolCallStarted {
            id: "t9".into(),
            name: "bash".into(),
            input: json!({"command": "rustc hello.rs && ./hello"}),
            summary: "rustc hello.rs && ./hello".into(),
        },
    );
    app.tick();
    app.tick();
    insta::assert_snapshot!(screen(&app, 120, 40));
}

#[test]
fn tool_output_folded_and_error_in_place() {
    let mut app = app(Theme::Cyberpunk);
    conversation(&mut app);
    ev(
        &mut app,
        Event::ToolCallStarted {
            id: "t4".into(),
            name: "bash".into(),
            input: json!({"command": "cargo build"}),
            summary: "cargo build".into(),
        },
    );
    let output: String = (1..=12).map(|i| format!("error line {i}\n")).collect();
    ev(
        &mut app,
        Event::ToolCallFinished {
            id: "t4".into(),
            name: "bash".into(),
            outcome: safe_coder_protocol::ToolOutcome::Error,
            output,
            duration_ms: 2300,
        },
    );
    ev(
        &mut app,
        Event::Error {
            message: "the model request failed: connection reset".into(),
        },
    );
    ev(
        &mut app,
        Event::TurnFinished {
            text: String::new(),
            truncated: false,
        },
    );
    insta::assert_snapshot!(screen(&app, 120, 40));
}

#[test]
fn approval_dialog_edit() {
    let mut app = app(Theme::Cyberpunk);
    conversation(&mut app);
    app.handle_input(UiInput::Approval(edit_request()));
    insta::assert_snapshot!(screen(&app, 120, 40));
}

#[test]
fn approval_dialog_bash() {
    let mut app = app(Theme::Cyberpunk);
    conversation(&mut app);
    app.handle_input(UiInput::Approval(bash_request()));
    insta::assert_snapshot!(screen(&app, 120, 40));
}

#[test]
fn approval_dialog_reason() {
    let mut app = app(Theme::Cyberpunk);
    app.handle_input(UiInput::Approval(bash_request()));
    type_text(&mut app, "rtoo dangerous");
    insta::assert_snapshot!(screen(&app, 80, 24));
}

#[test]
fn review_screen() {
    let mut app = app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(false)));
    insta::assert_snapshot!(screen(&app, 120, 30));
}

#[test]
fn review_with_conflict() {
    let mut app = app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(true)));
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Down,
    ));
    insta::assert_snapshot!(screen(&app, 120, 30));
}

#[test]
fn review_narrow() {
    let mut app = app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(true)));
    insta::assert_snapshot!(screen(&app, 60, 30));
}

#[test]
fn sync_result() {
    let mut app = app(Theme::Cyberpunk);
    conversation(&mut app);
    app.handle_input(UiInput::SyncResult(
        "Synced 2 file(s):\n  - src/main.rs\n  - hello.rs".into(),
    ));
    insta::assert_snapshot!(screen(&app, 100, 30));
}

#[test]
fn narrow_terminal_60_columns() {
    let mut app = app(Theme::Cyberpunk);
    conversation(&mut app);
    ev(
        &mut app,
        Event::TurnFinished {
            text: ANSWER.into(),
            truncated: false,
        },
    );
    insta::assert_snapshot!(screen(&app, 60, 30));
}

#[test]
fn plain_theme() {
    let mut app = app(Theme::Plain);
    conversation(&mut app);
    ev(
        &mut app,
        Event::TurnFinished {
            text: ANSWER.into(),
            truncated: false,
        },
    );
    let t = render(&app, 100, 36);
    for cell in t.backend().buffer().content() {
        assert!(
            matches!(cell.fg, Color::Reset) && matches!(cell.bg, Color::Reset),
            "plain theme must use no colour, found {cell:?}"
        );
    }
    insta::assert_snapshot!(t.backend().to_string());
}

#[test]
fn cyberpunk_theme_uses_colour_and_pulses_while_busy() {
    let mut app = app(Theme::Cyberpunk);
    ev(&mut app, Event::TurnStarted);
    let a = render(&app, 100, 30);
    app.tick();
    let b = render(&app, 100, 30);
    let corner =
        |t: &ratatui::Terminal<ratatui::backend::TestBackend>| t.backend().buffer()[(0, 3)].fg;
    assert_ne!(corner(&a), Color::Reset);
    assert_ne!(
        corner(&a),
        corner(&b),
        "the busy border colour cycles on each tick"
    );
}

#[test]
fn the_token_line_is_never_cut() {
    let mut app = app(Theme::Plain);
    conversation(&mut app);
    let big = safe_coder_protocol::Usage {
        input_tokens: 999_900,
        output_tokens: 999_900,
    };
    ev(
        &mut app,
        Event::Usage {
            last: big,
            total: big,
        },
    );
    // The narrowest layout that still has the sandbox panel.
    let s = screen(&app, 80, 24);
    assert!(s.contains("Tokens: 999.9k in/999.9k out"), "{s}");
}

#[test]
fn a_restored_conversation_is_shown_with_its_tools_and_counted_like_stats() {
    use safe_coder_protocol::{ContentBlock, Message, Role, ToolInput};
    let mut app = app(Theme::Plain);
    let messages = vec![
        Message::user_text("remember the word pineapple"),
        Message {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "t1".into(),
                name: "write_file".into(),
                input: ToolInput::Json(json!({"path": "notes.txt", "content": "pineapple"})),
            }],
        },
        Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "t1".into(),
                content: "wrote 9 bytes".into(),
                is_error: false,
            }],
        },
        Message::assistant_text("Noted: pineapple."),
    ];
    ev(&mut app, Event::ConversationRestored { messages });
    let s = screen(&app, 120, 30);
    assert!(s.contains("remember the word pineapple"), "{s}");
    assert!(s.contains("Noted: pineapple."), "{s}");
    assert!(s.contains("notes.txt"), "{s}");
    // Three messages, as `/stats` counts them (the tool result is not one).
    assert!(s.contains("Resumed with 3 message(s)"), "{s}");
    // The recent-tools panel lists the call too (the conversation shows it once).
    assert!(s.matches("write_file").count() >= 2, "{s}");
}
