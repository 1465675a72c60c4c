//! The terminal UI of `safe-coder chat`: ratatui drawing as a pure function of state.
//!
//! This crate does not know the core. It consumes [`UiInput`]s (the core's
//! [`Event`](safe_coder_protocol::Event) stream, sandbox status, approval and review
//! requests) and produces [`UiAction`]s (submitted lines, cancel, approval decisions,
//! review results). The CLI wires both channels to the turn loop.
//!
//! The pure parts ([`App`], [`draw`]) are public for tests and benchmarks; [`run`]
//! owns the real terminal.

mod app;
mod highlight;
mod markdown;
mod terminal;
mod theme;
mod ui;

pub use app::{App, Focus};
pub use terminal::run;
pub use theme::Theme;
pub use ui::draw;

use std::collections::HashMap;

use safe_coder_protocol::{
    ApprovalDecision, ApprovalMode, ApprovalRequest, ChangeSet, Event, SandboxStatus,
};

/// What the UI receives from the lead.
#[derive(Clone, Debug)]
pub enum UiInput {
    /// The core's event stream (text deltas, tool calls, usage, errors, turn end...).
    Event(Event),
    /// The sandbox status, sent about every second for the status panel.
    Status(SandboxStatus),
    /// Show the approval dialog; the answer comes back as [`UiAction::Approval`].
    Approval(ApprovalRequest),
    /// Show the review screen; the answer is [`UiAction::Review`] or
    /// [`UiAction::KeepForLater`].
    Review(ReviewData),
    /// What sync did; shown until a key is pressed (then the UI closes if the user
    /// was quitting).
    SyncResult(String),
    /// Candidates for the `@path` or `/command` being typed (answer to
    /// [`UiAction::RequestCompletions`]).
    Completions(Vec<String>),
}

/// What the review screen shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReviewData {
    pub changes: ChangeSet,
    /// Path → unified diff of that file.
    pub diffs: HashMap<String, String>,
}

/// What the UI asks the lead to do.
#[derive(Clone, Debug, PartialEq)]
pub enum UiAction {
    /// Enter on the input line. Slash commands, `!cmd` and `@path` are passed verbatim.
    Submit(String),
    /// Ctrl+C while a turn runs.
    Cancel,
    /// The answer to the approval dialog of call `call_id`.
    Approval {
        call_id: String,
        decision: ApprovalDecision,
    },
    /// Shift+Tab: the next approval mode (the UI shows `ApprovalMode::next`).
    CycleApprovalMode,
    /// Enter on the review screen: sync these paths (empty = reject everything).
    Review(Vec<String>),
    /// Esc on the review screen: sync nothing now, keep the changes in the session.
    KeepForLater,
    /// Ctrl+C when idle: the lead answers with a review (if there are changes), then
    /// a sync result, then closes the input channel.
    Quit,
    /// Tab while typing `@path` or `/command`: the text typed so far.
    RequestCompletions(String),
}

/// How the UI starts.
#[derive(Clone, Debug)]
pub struct TuiConfig {
    /// Shown in the header.
    pub project: String,
    pub theme: Theme,
    pub approval_mode: ApprovalMode,
    pub provider: String,
    pub model: String,
}
