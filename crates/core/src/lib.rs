//! The application core: sessions, the turn loop, and the queue pair front ends use.
//!
//! A front end calls [`start`] with resolved [`Settings`] and gets a [`Conversation`]:
//! it sends [`Op`](safe_coder_protocol::Op)s and renders the
//! [`Event`](safe_coder_protocol::Event)s that come back. Everything else — opening or
//! resuming the session, approvals, slash commands, `!cmd`, the review and sync, the
//! end-of-session policy, the store record — happens here, once, for every front end.
//! See `docs/architecture.md`.

mod agent;
mod approval;
mod commands;
mod compact;
mod conversation;
mod prompt;
mod recorder;
mod run;
pub mod session;
mod settings;
mod workspace;

pub use agent::{Agent, AgentOptions, CoreError, EventSink, TurnOutcome};
pub use approval::{needs_approval, Approver, HeadlessApprover};
pub use compact::estimate_tokens;
pub use conversation::{start, start_run, Conversation, StartError};
pub use prompt::system_prompt;
pub use recorder::Recorder;
pub use run::FORWARDER_PORT;
pub use settings::{Price, Settings, Start};
pub use workspace::{ReviewResult, SyncReport, Workspace};
