use async_trait::async_trait;
use safe_coder_protocol::{ApprovalDecision, ApprovalMode, ApprovalRequest};

/// Asks the user whether a tool call may run. Line mode asks on the terminal, the TUI
/// shows a dialog, `exec` cannot ask at all ([`HeadlessApprover`]).
#[async_trait]
pub trait Approver: Send + Sync {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision;
}

/// For `exec`: nothing can be asked, so a call that needs asking is refused with a
/// result that says so (DESIGN §6).
pub struct HeadlessApprover {
    pub mode: ApprovalMode,
}

#[async_trait]
impl Approver for HeadlessApprover {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision {
        let suggestion = if request.tool_name == "bash" {
            "--approval-mode yolo"
        } else {
            "--approval-mode auto-edit (or yolo)"
        };
        ApprovalDecision::DenyWithReason {
            reason: format!(
                "{} needs the user's approval in approval mode '{}', and this headless run cannot ask; the user can rerun with {suggestion}",
                request.tool_name, self.mode
            ),
        }
    }
}

/// Whether a call of `tool` must be approved in `mode`. `None` means the mode forbids
/// the tool outright (plan mode and a tool that changes things).
pub fn needs_approval(mode: ApprovalMode, tool: &str) -> Option<bool> {
    let read_only = safe_coder_tools::is_read_only(tool);
    match mode {
        ApprovalMode::Plan => {
            if read_only {
                Some(false)
            } else {
                None
            }
        }
        ApprovalMode::Default => Some(!read_only),
        ApprovalMode::AutoEdit => Some(tool == "bash"),
        ApprovalMode::Yolo => Some(false),
    }
}
