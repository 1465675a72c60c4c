//! Types shared by every Safe Coder crate.
//!
//! Nothing here does I/O. The model client (`llm`), the tools, the core turn loop and
//! the front ends (line mode, `exec --json`, the TUI) all speak in these types, so a
//! front end is only a consumer of [`Event`]s, as in codex-rs.

mod approval;
mod changes;
pub mod display;
mod event;
mod message;
mod op;
mod status;
pub mod text;

pub use approval::{
    ApprovalDecision, ApprovalMode, ApprovalRequest, ApprovalSubject, Effect, Gate,
};
pub use changes::{steers_next_session, ChangeKind, ChangeSet, FileChange, LeftOutPath};
pub use event::{Event, SyncOutcome, ToolOutcome};
pub use message::{
    ContentBlock, Message, ModelRequest, ModelResponse, Role, StopReason, StreamEvent, ToolInput,
    ToolSpec, Usage,
};
pub use op::{Op, ReviewDecision, RunRequest};
pub use status::{SandboxState, SandboxStatus};
