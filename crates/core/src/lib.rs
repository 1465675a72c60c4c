//! The session and its turn loop.
//!
//! Front ends (line mode, `exec`, the TUI) drive an [`Agent`] and consume the
//! [`Event`](safe_coder_protocol::Event)s it emits through an [`EventSink`]; approvals
//! come back through an [`Approver`]. The [`session`] module owns a session's life:
//! sandbox, git history, store record, review and sync back.

mod agent;
mod approval;
mod compact;
mod prompt;
pub mod session;

pub use agent::{Agent, AgentOptions, CoreError, EventSink, TurnOutcome};
pub use approval::{needs_approval, Approver, HeadlessApprover};
pub use compact::estimate_tokens;
pub use prompt::system_prompt;
