//! The words every front end uses for the same events, so that line mode, `exec` and
//! the TUI say the same thing about a session's start and its sync. Plain text, no
//! terminal codes; each front end styles it.

use crate::{Event, SyncOutcome};

/// The one-line backend note: what was chosen and its first reason ("auto chose
/// process: confiner: bubblewrap"), without the probe's details or the backends passed
/// over (those are for `sandbox doctor` and `-v`). Each note's clauses are separated by
/// "; ", so the first clause is the short form.
pub fn short_backend_note(note: &str) -> &str {
    note.split("; ").next().unwrap_or(note).trim()
}

/// `Session ID on the B backend (why)`.
pub fn session_started_line(session_id: &str, backend: &str, note: &str, verbose: bool) -> String {
    let note = if verbose {
        note.trim()
    } else {
        short_backend_note(note)
    };
    if note.is_empty() {
        format!("Session {session_id} on the {backend} backend")
    } else {
        format!("Session {session_id} on the {backend} backend ({note})")
    }
}

/// What a review did, in a few lines: the text of an [`Event::SyncFinished`] (`None` for
/// any other event).
pub fn sync_finished_text(event: &Event) -> Option<String> {
    let Event::SyncFinished {
        outcome,
        project,
        session_id,
        applied,
        conflicts,
        held_back,
        not_written,
        session_kept,
    } = event
    else {
        return None;
    };
    let mut text = match outcome {
        SyncOutcome::NoChanges => "No changes.".to_string(),
        SyncOutcome::InPlace => format!("The changes are already in {project} (direct backend)."),
        SyncOutcome::Rejected => "Changes rejected; your project is untouched.".to_string(),
        SyncOutcome::Kept => format!(
            "Changes kept in session {session_id}: review with `safe-coder sessions diff {session_id}`, apply with `safe-coder sessions sync {session_id}`."
        ),
        SyncOutcome::Synced => format!(
            "✓ Changes synced to host: {project} ({} file(s))",
            applied.len()
        ),
    };
    let why = |path: &str, fallback: &str| -> String {
        not_written
            .get(path)
            .cloned()
            .unwrap_or_else(|| fallback.to_string())
    };
    for c in conflicts {
        text.push_str(&format!(
            "\n⚠ {c}: {}; the agent's version stays in session {session_id} (`safe-coder sessions diff {session_id} {c}` shows it; `safe-coder sessions sync {session_id} --theirs {c}` takes it, `--ours {c}` keeps yours)",
            why(c, "changed on the host since the session began"),
            c = escape_for_terminal(c)
        ));
    }
    for (path, reason) in not_written {
        if !conflicts.contains(path) {
            text.push_str(&format!(
                "\n⚠ {}: not written: {reason}; it stays in session {session_id}",
                escape_for_terminal(path)
            ));
        }
    }
    for h in held_back {
        text.push_str(&format!(
            "\n⚠ {h}: steers the next session (or is a symlink), so \"accept all\" left it in session {session_id}; sync it by name: `safe-coder sessions sync {session_id} --files {h}`",
            h = escape_for_terminal(h)
        ));
    }
    if *session_kept && *outcome == SyncOutcome::Synced {
        text.push_str(&format!("\nSession {session_id} keeps the unsynced work."));
    }
    Some(text)
}

/// The lines shown when `safe-coder run`'s command ended: how it ended, and the network
/// destinations refused (`None` for any other event).
pub fn run_finished_text(event: &Event) -> Option<String> {
    let Event::RunFinished {
        command,
        exit_code,
        signal,
        refused,
    } = event
    else {
        return None;
    };
    let command = escape_for_terminal(command);
    let mut text = match (exit_code, signal) {
        (Some(code), _) => format!("■ {command} exited with code {code}"),
        (None, Some(sig)) => format!("■ {command} was killed by signal {sig}"),
        (None, None) => format!("■ {command} ended"),
    };
    if !refused.is_empty() {
        let list: Vec<String> = refused
            .iter()
            .map(|r| escape_for_terminal(r).into_owned())
            .collect();
        text.push_str(&format!(
            "\n⊘ network: refused {} destination(s) not on the allow-list: {} (allow one with --allow-net HOST:PORT)",
            list.len(),
            list.join(", ")
        ));
    }
    Some(text)
}

/// `text` with terminal control characters made visible (`\x1b`, `\r`, `\u{202e}`…),
/// so a file name or an output line the agent made cannot erase or hide other lines.
/// Newlines and tabs are kept.
pub fn escape_for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    };
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if bad(c) {
            match c {
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The lines of a `!cmd`'s result: its output and how it ended.
pub fn shell_result(
    output: &str,
    exit_code: Option<i32>,
    timed_out: bool,
    cancelled: bool,
) -> String {
    let mut shown = output.to_string();
    if !shown.ends_with('\n') && !shown.is_empty() {
        shown.push('\n');
    }
    match exit_code {
        Some(0) if shown.is_empty() => shown.push_str("(no output, exit code 0)\n"),
        Some(0) => {}
        Some(code) => shown.push_str(&format!("(exit code {code})\n")),
        None if timed_out => shown.push_str("(timed out)\n"),
        None if cancelled => shown.push_str("(cancelled)\n"),
        None => shown.push_str("(killed)\n"),
    }
    shown.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_backend_note_is_its_first_clause() {
        let note = "auto chose process: confiner: bubblewrap; bubblewrap 0.8.0 (/usr/bin/bwrap) runs a namespaced sandbox with seccomp; memory: cgroup v1; passed over firecracker (not built)";
        assert_eq!(
            short_backend_note(note),
            "auto chose process: confiner: bubblewrap"
        );
        assert_eq!(
            session_started_line("s1", "process", note, false),
            "Session s1 on the process backend (auto chose process: confiner: bubblewrap)"
        );
        assert!(session_started_line("s1", "process", note, true).contains("passed over"));
        assert_eq!(short_backend_note("no isolation"), "no isolation");
    }
}
