//! Text for a person reading a terminal: how line mode and `exec` show the core's
//! events. The TUI draws the same events its own way.

use safe_coder_protocol::display::{
    escape_for_terminal, session_started_line, shell_result, sync_finished_text,
};
use safe_coder_protocol::{Event, ToolOutcome};

/// `✓ bash (12 ms) first line of its output`: how front ends report a finished call.
pub fn tool_finished_line(
    name: &str,
    outcome: ToolOutcome,
    duration_ms: u64,
    output: &str,
) -> String {
    let mark = match outcome {
        ToolOutcome::Ok => "✓",
        ToolOutcome::Error => "✗",
        ToolOutcome::Denied => "⊘",
    };
    let first = output.lines().next().unwrap_or("");
    format!("{mark} {name} ({duration_ms} ms) {first}")
}

/// The text of an event that is not part of the streamed answer, or `None` for events
/// the caller renders itself (or not at all). `verbose` shows the full backend note.
pub fn event_text(event: &Event, verbose: bool) -> Option<String> {
    Some(match event {
        Event::SessionStarted {
            session_id,
            backend,
            note,
            ..
        } => session_started_line(session_id, backend, note, verbose),
        Event::ToolCallStarted { name, summary, .. } => {
            format!("🔧 {name} {}", escape_for_terminal(summary))
        }
        Event::ToolCallFinished {
            name,
            outcome,
            duration_ms,
            output,
            ..
        } => escape_for_terminal(&tool_finished_line(name, *outcome, *duration_ms, output))
            .into_owned(),
        Event::Retrying {
            attempt,
            delay_ms,
            reason,
        } => {
            format!("… retrying ({attempt}) in {delay_ms} ms: {reason}; the text above may repeat")
        }
        Event::Committed { message, commit } => {
            let short: String = commit.chars().take(8).collect();
            format!("🔒 {short} {}", escape_for_terminal(message))
        }
        Event::Error { message } | Event::TurnFailed { message } => format!("✗ error: {message}"),
        Event::Notice { message } => message.clone(),
        Event::TurnCancelled => "(cancelled)".to_string(),
        Event::ShellStarted { command } => format!("$ {}", escape_for_terminal(command)),
        Event::ShellFinished {
            output,
            exit_code,
            timed_out,
            cancelled,
            ..
        } => escape_for_terminal(&shell_result(output, *exit_code, *timed_out, *cancelled))
            .into_owned(),
        Event::ChangeSummary { changes } => {
            format!(
                "🔒 Changes detected in the sandbox:\n{}",
                changes.summary_text().trim_end()
            )
        }
        e @ Event::SyncFinished { .. } => return sync_finished_text(e),
        _ => return None,
    })
}
