use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::collections::BTreeMap;

use crate::{ApprovalMode, ApprovalRequest, ChangeSet, Message, SandboxStatus, Usage};

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
        approval_mode: ApprovalMode,
        /// Messages restored from an earlier run (`--resume`); 0 for a new session.
        #[serde(default)]
        resumed_messages: usize,
    },
    /// The earlier conversation of a resumed session, for the front end to show.
    ConversationRestored {
        messages: Vec<Message>,
    },
    /// The model or the approval mode changed (`/model`, `/approval-mode`, Shift+Tab).
    SettingsChanged {
        model: String,
        approval_mode: ApprovalMode,
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
    /// The model ended its turn; `text` is its final answer. `truncated`: the reply was
    /// cut at the output token limit, so the answer is incomplete.
    TurnFinished {
        text: String,
        #[serde(default)]
        truncated: bool,
    },
    /// The turn was cancelled by the user.
    TurnCancelled,
    /// The turn ended in an error (after any retries); the session goes on.
    TurnFailed {
        message: String,
    },
    /// The core finished what the user last asked and waits for the next op.
    Ready,
    /// A `!cmd` began to run in the sandbox.
    ShellStarted {
        command: String,
    },
    /// A `!cmd` ended. `exit_code` is `None` when it was killed (timeout, cancel).
    ShellFinished {
        command: String,
        output: String,
        exit_code: Option<i32>,
        timed_out: bool,
        cancelled: bool,
    },
    /// An informational line for the user (backend choice, compaction...).
    Notice {
        message: String,
    },
    /// The agent's changes, before review (at the end of a session or at `/sync`).
    ChangeSummary {
        changes: ChangeSet,
    },
    /// The user must decide what to sync: answer with [`Op::Review`](crate::Op::Review).
    /// `diffs` maps each path to its unified diff. `ending`: the session ends after it.
    ReviewRequested {
        changes: ChangeSet,
        diffs: BTreeMap<String, String>,
        ending: bool,
    },
    /// What the review did. `session_kept`: unsynced work remains in the session.
    SyncFinished {
        outcome: SyncOutcome,
        project: String,
        session_id: String,
        applied: Vec<String>,
        conflicts: Vec<String>,
        /// Flagged files (they steer the next session, or are symlinks) that "accept
        /// all" left in the session: they are synced only when picked by name.
        #[serde(default)]
        held_back: Vec<String>,
        /// Why each conflict, and each accepted file that could not be written (a
        /// directory or symlink in the way, a file changed since review), was not
        /// written: one sentence each.
        #[serde(default)]
        not_written: BTreeMap<String, String>,
        session_kept: bool,
    },
    /// The live state of the sandbox (sent about once a second when asked for).
    Status {
        status: SandboxStatus,
    },
    /// Candidates for [`Op::Complete`](crate::Op::Complete).
    Completions {
        items: Vec<String>,
    },
    /// [`Op::Run`](crate::Op::Run) started the command. `allow_net`: the hosts it may
    /// reach (none: no network).
    RunStarted {
        command: String,
        allow_net: Vec<String>,
    },
    /// Output of the running command's terminal, as it came.
    TerminalOutput {
        data: Vec<u8>,
    },
    /// The running command tried to reach a destination not on the allow-list.
    NetworkRefused {
        host: String,
        port: u16,
    },
    /// The command ended (its work is committed). `refused`: every destination the
    /// allow-list refused, as `host:port`.
    RunFinished {
        command: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        refused: Vec<String>,
    },
    /// The session is over; the event stream ends after this. `kept`: the session still
    /// holds unsynced work (`safe-coder sessions sync ID`).
    SessionEnded {
        session_id: String,
        kept: bool,
    },
}

/// What a review ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// The accepted files were written to the project (see `applied`, `conflicts`).
    Synced,
    /// Every change was dropped; the project is untouched.
    Rejected,
    /// Nothing synced now; the changes wait in the session.
    Kept,
    /// The agent changed nothing.
    NoChanges,
    /// `direct`: the changes are already in the project.
    InPlace,
}
