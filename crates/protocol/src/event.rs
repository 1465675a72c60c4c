use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ApprovalRequest, ChangeSet, Usage};

/// How a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOutcome {
    Ok,
    /// The tool ran and failed (or refused); the error went back to the model.
    Error,
    /// The user or the approval mode refused it.
    Denied,
}

/// What the core reports while it works. Every front end (line mode, `exec --json`,
/// the TUI) is a consumer of this one stream. With `exec --json` each event is printed
/// as one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SessionStarted {
        session_id: String,
        project: String,
        backend: String,
        /// Why this backend was chosen (for `auto`), or empty.
        note: String,
        provider: String,
        model: String,
    },
    /// A user message was accepted and the model is being asked.
    TurnStarted,
    /// A piece of streamed assistant text.
    TextDelta {
        text: String,
    },
    /// The provider is retrying; drop the text streamed since the last request.
    Retrying {
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    /// One model reply is complete (it may be followed by tool calls).
    AssistantMessage {
        text: String,
    },
    ToolCallStarted {
        id: String,
        name: String,
        input: Value,
        /// The tool's one-line summary of the call (the path, the command), so front ends
        /// never parse `input` themselves.
        #[serde(default)]
        summary: String,
    },
    ApprovalRequested {
        request: ApprovalRequest,
    },
    ToolCallFinished {
        id: String,
        name: String,
        outcome: ToolOutcome,
        /// What the model received (possibly capped).
        output: String,
        duration_ms: u64,
    },
    /// Token usage of one model request, and the session's totals.
    Usage {
        last: Usage,
        total: Usage,
    },
    /// A commit was recorded in the session history.
    Committed {
        message: String,
        commit: String,
    },
    /// Something went wrong; the session goes on where it can.
    Error {
        message: String,
    },
    /// The model ended its turn; `text` is its final answer.
    TurnFinished {
        text: String,
    },
    /// The turn was cancelled by the user.
    TurnCancelled,
    /// An informational line for the user (backend choice, compaction...).
    Notice {
        message: String,
    },
    /// The agent's changes at the end of a session, before review.
    ChangeSummary {
        changes: ChangeSet,
    },
    /// What sync back did. `session_kept`: unsynced work remains in the session.
    SyncFinished {
        applied: Vec<String>,
        conflicts: Vec<String>,
        session_kept: bool,
    },
}
