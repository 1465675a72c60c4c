//! Issue 11: an agent-made file name or diff line cannot erase or hide other lines of
//! the review screen, and files that steer the next session are marked.

mod common;

use std::collections::HashMap;

use common::*;
use safe_coder_protocol::{ChangeKind, ChangeSet, FileChange};
use safe_coder_tui::{ReviewData, Theme, UiInput};

fn file(path: &str, steers: bool, link: bool) -> FileChange {
    FileChange {
        path: path.into(),
        kind: ChangeKind::Added,
        executable: false,
        additions: 1,
        deletions: 0,
        conflict: false,
        conflict_reason: None,
        steers_next_session: steers,
        is_symlink: link,
    }
}

#[test]
fn review_shows_control_characters_escaped_and_flags_steering_files() {
    let mut app = app(Theme::Cyberpunk);
    let evil = "a\x1b[2K\rb.txt";
    let mut diffs = HashMap::new();
    diffs.insert(
        evil.to_string(),
        "--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+ok\rHIDDEN\x1b[1A\n".to_string(),
    );
    app.handle_input(UiInput::Review(ReviewData {
        changes: ChangeSet {
            files: vec![
                file(evil, false, false),
                file("AGENTS.md", true, false),
                file("link", false, true),
            ],
            ..Default::default()
        },
        diffs,
    }));
    let text = screen(&app, 120, 30);
    assert!(text.contains("a\\x1b[2K\\rb.txt"), "{text}");
    assert!(text.contains("+ok\\rHIDDEN\\x1b[1A"), "{text}");
    assert!(text.contains("⚠ steers the next session"), "{text}");
    assert!(text.contains("⚠ symlink"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\r'));
}
