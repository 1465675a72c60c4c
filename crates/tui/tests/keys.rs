//! Key handling: which keys produce which actions.

mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use safe_coder_protocol::{ApprovalDecision, ApprovalMode, Event};
use safe_coder_tui::{App, Focus, Theme, UiAction, UiInput};

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::from(code)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn press(app: &mut App, code: KeyCode) -> Option<UiAction> {
    app.handle_key(key(code))
}

#[test]
fn enter_submits_the_input_verbatim() {
    let mut app = common::app(Theme::Cyberpunk);
    type_text(&mut app, "/sync @src/main.rs");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(UiAction::Submit("/sync @src/main.rs".into()))
    );
    assert_eq!(app.input_text(), "");
    assert_eq!(app.entry_count(), 1);
    // An empty line sends nothing.
    assert_eq!(press(&mut app, KeyCode::Enter), None);
}

#[test]
fn input_editing_keys() {
    let mut app = common::app(Theme::Cyberpunk);
    type_text(&mut app, "hello world");
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Left);
    press(&mut app, KeyCode::Backspace);
    assert_eq!(app.input_text(), "hello wold");
    app.handle_key(ctrl('a'));
    press(&mut app, KeyCode::Delete);
    assert_eq!(app.input_text(), "ello wold");
    app.handle_key(ctrl('e'));
    type_text(&mut app, "!");
    assert_eq!(app.input_text(), "ello wold!");
    app.handle_key(ctrl('w'));
    assert_eq!(app.input_text(), "ello ");
    app.handle_key(ctrl('u'));
    assert_eq!(app.input_text(), "");
    app.paste("pasted\r\ntext");
    assert_eq!(app.input_text(), "pasted\ntext");
}

#[test]
fn ctrl_c_cancels_a_running_turn_and_quits_when_idle() {
    let mut app = common::app(Theme::Cyberpunk);
    ev(&mut app, Event::TurnStarted);
    assert!(app.is_busy());
    assert_eq!(app.handle_key(ctrl('c')), Some(UiAction::Cancel));
    ev(&mut app, Event::TurnCancelled);
    assert!(!app.is_busy());
    assert_eq!(app.handle_key(ctrl('c')), Some(UiAction::Quit));
    assert!(!app.is_finished());
    // A second Ctrl+C while the lead does not answer closes the UI.
    assert_eq!(app.handle_key(ctrl('c')), None);
    assert!(app.is_finished());
}

#[test]
fn shift_tab_cycles_the_approval_mode() {
    let mut app = common::app(Theme::Cyberpunk);
    assert_eq!(
        press(&mut app, KeyCode::BackTab),
        Some(UiAction::CycleApprovalMode)
    );
    let s = screen(&app, 120, 30);
    assert!(
        s.contains(&format!("Mode: {}", ApprovalMode::AutoEdit)),
        "{s}"
    );
}

#[test]
fn tab_switches_focus_or_asks_for_completions() {
    let mut app = common::app(Theme::Cyberpunk);
    assert_eq!(app.focus(), Focus::Conversation);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Tools);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Input);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Conversation);

    type_text(&mut app, "explain @src/ma");
    assert_eq!(
        press(&mut app, KeyCode::Tab),
        Some(UiAction::RequestCompletions("explain @src/ma".into()))
    );
    app.handle_input(UiInput::Completions(vec!["@src/main.rs".into()]));
    assert_eq!(app.input_text(), "explain @src/main.rs ");
    assert_eq!(app.focus(), Focus::Conversation);
}

#[test]
fn input_history_with_focus_on_input() {
    let mut app = common::app(Theme::Cyberpunk);
    type_text(&mut app, "first");
    press(&mut app, KeyCode::Enter);
    type_text(&mut app, "second");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus(), Focus::Input);
    press(&mut app, KeyCode::Up);
    assert_eq!(app.input_text(), "second");
    press(&mut app, KeyCode::Up);
    assert_eq!(app.input_text(), "first");
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    assert_eq!(app.input_text(), "");
}

#[test]
fn approval_keys() {
    for (k, want) in [
        ('y', ApprovalDecision::Approve),
        ('n', ApprovalDecision::Deny),
        ('a', ApprovalDecision::ApproveAlwaysForTool),
    ] {
        let mut app = common::app(Theme::Cyberpunk);
        app.handle_input(UiInput::Approval(edit_request()));
        // Typing goes to the dialog, not the input line.
        assert_eq!(
            press(&mut app, KeyCode::Char(k)),
            Some(UiAction::Approval {
                call_id: edit_request().tool_call_id,
                decision: want
            })
        );
        assert_eq!(app.input_text(), "");
        // The dialog is closed: keys type again.
        type_text(&mut app, "x");
        assert_eq!(app.input_text(), "x");
    }
}

#[test]
fn approval_refusal_with_a_reason() {
    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::Approval(bash_request()));
    assert_eq!(press(&mut app, KeyCode::Char('r')), None);
    type_text(&mut app, "use cargo check");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(UiAction::Approval {
            call_id: bash_request().tool_call_id,
            decision: ApprovalDecision::DenyWithReason {
                reason: "use cargo check".into()
            }
        })
    );
}

#[test]
fn approvals_arriving_twice_or_together_are_asked_once_each() {
    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::Approval(edit_request()));
    ev(
        &mut app,
        Event::ApprovalRequested {
            request: edit_request(),
        },
    );
    app.handle_input(UiInput::Approval(bash_request()));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(UiAction::Approval {
            call_id: edit_request().tool_call_id,
            decision: ApprovalDecision::Approve
        })
    );
    // The queued bash request is next.
    assert!(screen(&app, 100, 30).contains("Approval required: bash"));
    assert_eq!(
        press(&mut app, KeyCode::Char('n')),
        Some(UiAction::Approval {
            call_id: bash_request().tool_call_id,
            decision: ApprovalDecision::Deny
        })
    );
    assert!(!screen(&app, 100, 30).contains("Approval required"));
}

#[test]
fn review_toggles_produce_the_accepted_list() {
    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(true)));
    // Conflicts start rejected and cannot be accepted.
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char(' '));
    // Reject old.txt.
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Char(' '));
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(UiAction::Review(vec!["src/main.rs".into()]))
    );
}

#[test]
fn review_accept_all_and_reject_all() {
    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(true)));
    press(&mut app, KeyCode::Char('r'));
    press(&mut app, KeyCode::Char('a'));
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(UiAction::Review(vec![
            "src/main.rs".into(),
            "old.txt".into()
        ]))
    );

    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(false)));
    press(&mut app, KeyCode::Char('r'));
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(UiAction::Review(vec![]))
    );

    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::Review(review(false)));
    assert_eq!(press(&mut app, KeyCode::Esc), Some(UiAction::KeepForLater));
}

#[test]
fn quit_flow_ends_after_the_sync_result() {
    let mut app = common::app(Theme::Cyberpunk);
    assert_eq!(app.handle_key(ctrl('c')), Some(UiAction::Quit));
    app.handle_input(UiInput::Review(review(false)));
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(UiAction::Review(vec![
            "src/main.rs".into(),
            "hello.rs".into(),
            "old.txt".into()
        ]))
    );
    assert!(!app.is_finished());
    app.handle_input(UiInput::SyncResult("Synced 3 file(s)".into()));
    assert!(screen(&app, 100, 30).contains("Synced 3 file(s)"));
    press(&mut app, KeyCode::Char('x'));
    assert!(app.is_finished());
}

#[test]
fn scrolling_with_keys_and_mouse() {
    let mut app = common::app(Theme::Cyberpunk);
    for i in 0..50 {
        ev(
            &mut app,
            Event::Notice {
                message: format!("notice number {i}"),
            },
        );
    }
    let bottom = screen(&app, 100, 30);
    assert!(bottom.contains("notice number 49"));
    press(&mut app, KeyCode::PageUp);
    let up = screen(&app, 100, 30);
    assert!(!up.contains("notice number 49"));
    assert!(up.contains("more lines"));
    press(&mut app, KeyCode::Home);
    let top = screen(&app, 100, 30);
    assert!(top.contains("notice number 0 "), "{top}");
    press(&mut app, KeyCode::End);
    assert!(screen(&app, 100, 30).contains("notice number 49"));
    app.handle_mouse(MouseEvent {
        kind: MouseEventKind::ScrollUp,
        column: 10,
        row: 10,
        modifiers: KeyModifiers::NONE,
    });
    assert!(!screen(&app, 100, 30).contains("notice number 49"));
}

#[test]
fn retrying_discards_the_streamed_text() {
    let mut app = common::app(Theme::Cyberpunk);
    ev(&mut app, Event::TurnStarted);
    ev(
        &mut app,
        Event::TextDelta {
            text: "garbled partial".into(),
        },
    );
    ev(
        &mut app,
        Event::Retrying {
            attempt: 1,
            delay_ms: 500,
            reason: "overloaded".into(),
        },
    );
    ev(
        &mut app,
        Event::TextDelta {
            text: "clean answer".into(),
        },
    );
    ev(
        &mut app,
        Event::TurnFinished {
            text: "clean answer".into(),
            truncated: false,
        },
    );
    let s = screen(&app, 100, 30);
    assert!(!s.contains("garbled"), "{s}");
    assert!(s.contains("clean answer"));
    assert_eq!(s.matches("clean answer").count(), 1, "{s}");
    assert!(s.contains("Retrying (attempt 1"));
}

#[test]
fn redraw_only_on_change_or_animation() {
    let mut app = common::app(Theme::Cyberpunk);
    assert!(app.needs_redraw());
    app.mark_drawn();
    app.tick();
    assert!(!app.needs_redraw(), "an idle UI does not redraw on ticks");
    assert!(!app.is_animating());
    ev(&mut app, Event::TurnStarted);
    assert!(app.needs_redraw());
    app.mark_drawn();
    assert!(app.is_animating());
    app.tick();
    assert!(app.needs_redraw(), "the spinner moves while busy");
}

#[test]
fn tiny_terminals_do_not_panic() {
    let mut app = common::app(Theme::Cyberpunk);
    conversation(&mut app);
    for (w, h) in [(1, 1), (10, 5), (20, 8), (40, 12), (59, 20)] {
        screen(&app, w, h);
    }
    app.handle_input(UiInput::Approval(edit_request()));
    for (w, h) in [(1, 1), (10, 5), (30, 10)] {
        screen(&app, w, h);
    }
    press(&mut app, KeyCode::Char('y'));
    app.handle_input(UiInput::Review(review(true)));
    for (w, h) in [(1, 1), (10, 5), (30, 10)] {
        screen(&app, w, h);
    }
}

#[test]
fn an_answered_approval_arriving_again_is_not_asked_again() {
    let mut app = common::app(Theme::Cyberpunk);
    ev(
        &mut app,
        Event::ApprovalRequested {
            request: edit_request(),
        },
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(UiAction::Approval {
            call_id: edit_request().tool_call_id,
            decision: ApprovalDecision::Approve
        })
    );
    app.handle_input(UiInput::Approval(edit_request()));
    assert!(!screen(&app, 100, 30).contains("Approval required"));
}

#[test]
fn new_lines_do_not_move_what_the_user_is_reading() {
    let mut app = common::app(Theme::Cyberpunk);
    for i in 0..50 {
        ev(
            &mut app,
            Event::Notice {
                message: format!("notice number {i}"),
            },
        );
    }
    screen(&app, 100, 30);
    press(&mut app, KeyCode::PageUp);
    let before = screen(&app, 100, 30);
    ev(&mut app, Event::TurnStarted);
    ev(
        &mut app,
        Event::TextDelta {
            text: "new text\n\nmore\n\nand more".into(),
        },
    );
    ev(
        &mut app,
        Event::TextDelta {
            text: " and more".into(),
        },
    );
    ev(
        &mut app,
        Event::Notice {
            message: "another".into(),
        },
    );
    let after = screen(&app, 100, 30);
    let conv = |s: &str| {
        s.lines()
            .skip(4)
            .take(20)
            .map(|l| l.chars().take(60).collect::<String>())
            .collect::<Vec<_>>()
    };
    assert_eq!(conv(&before), conv(&after));
    press(&mut app, KeyCode::End);
    assert!(screen(&app, 100, 30).contains("another"));
}

#[test]
fn a_sync_result_stays_until_a_key_after_the_lead_hangs_up() {
    let mut app = common::app(Theme::Cyberpunk);
    app.handle_input(UiInput::SyncResult("No changes.".into()));
    assert!(app.input_closed(), "the result waits for a key");
    assert!(screen(&app, 100, 30).contains("Press any key to close"));
    press(&mut app, KeyCode::Enter);
    assert!(app.is_finished());

    let mut app = common::app(Theme::Cyberpunk);
    assert!(!app.input_closed(), "nothing to show: close now");
}
