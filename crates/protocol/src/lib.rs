//! Types shared by every Safe Coder crate.
//!
//! Nothing here does I/O. The model client (`llm`), the tools, the core turn loop and
//! the front ends (line mode, `exec --json`, the TUI) all speak in these types, so a
//! front end is only a consumer of [`Event`]s, as in codex-rs.

mod approval;
mod changes;
mod event;
mod message;
mod status;

pub use approval::{ApprovalDecision, ApprovalMode, ApprovalRequest, ApprovalSubject};
pub use changes::{ChangeKind, ChangeSet, FileChange};
pub use event::{Event, ToolOutcome};
pub use message::{
    ContentBlock, Message, ModelRequest, ModelResponse, Role, StopReason, StreamEvent, ToolInput,
    ToolSpec, Usage,
};
pub use status::{SandboxState, SandboxStatus};
