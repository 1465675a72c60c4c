use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How much the agent may do without asking (DESIGN §6).
///
/// Ordered from the strictest to the loosest (`plan < default < auto-edit < yolo`), so
/// "is this looser than that" is a comparison. With the `clap` feature it is also a
/// `clap::ValueEnum` (`--approval-mode`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// Read-only tools only; the agent proposes.
    Plan,
    /// Ask before every write, edit and bash.
    #[default]
    Default,
    /// Edits run, bash asks.
    #[serde(alias = "auto_edit", alias = "autoedit")]
    #[cfg_attr(feature = "clap", value(alias = "auto_edit", alias = "autoedit"))]
    AutoEdit,
    /// Everything runs.
    Yolo,
}

impl ApprovalMode {
    pub const ALL: [ApprovalMode; 4] = [
        ApprovalMode::Plan,
        ApprovalMode::Default,
        ApprovalMode::AutoEdit,
        ApprovalMode::Yolo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalMode::Plan => "plan",
            ApprovalMode::Default => "default",
            ApprovalMode::AutoEdit => "auto-edit",
            ApprovalMode::Yolo => "yolo",
        }
    }

    /// The next mode in the cycle (Shift+Tab in the TUI).
    pub fn next(self) -> Self {
        match self {
            ApprovalMode::Plan => ApprovalMode::Default,
            ApprovalMode::Default => ApprovalMode::AutoEdit,
            ApprovalMode::AutoEdit => ApprovalMode::Yolo,
            ApprovalMode::Yolo => ApprovalMode::Plan,
        }
    }
}

impl fmt::Display for ApprovalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plan" => Ok(ApprovalMode::Plan),
            "default" => Ok(ApprovalMode::Default),
            "auto-edit" | "auto_edit" | "autoedit" => Ok(ApprovalMode::AutoEdit),
            "yolo" => Ok(ApprovalMode::Yolo),
            other => Err(format!(
                "unknown approval mode '{other}': use plan, default, auto-edit or yolo"
            )),
        }
    }
}

/// What the user is asked to approve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalSubject {
    /// A write or edit: the file and the unified diff it would apply.
    FileChange { path: String, diff: String },
    /// A shell command.
    Command { command: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub tool_call_id: String,
    pub tool_name: String,
    pub subject: ApprovalSubject,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ApprovalDecision {
    /// Run this call.
    Approve,
    /// Run this call and every later call of the same tool this session.
    ApproveAlwaysForTool,
    /// Do not run it; the model is told the user refused.
    Deny,
    /// Do not run it, and tell the model why.
    DenyWithReason { reason: String },
}
