use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How much the agent may do without asking (docs/approval-modes.md).
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

/// What a tool can do to the world, the one fact approval and history need about it
/// (no tool name is ever matched for that).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Only reads the project: runs without asking, also in plan mode.
    ReadOnly,
    /// Writes the files it names (and only those).
    WritesFiles,
    /// Runs commands, whose effects are unknown.
    RunsCommands,
}

impl Effect {
    pub const ALL: [Effect; 3] = [Effect::ReadOnly, Effect::WritesFiles, Effect::RunsCommands];

    pub fn is_read_only(self) -> bool {
        self == Effect::ReadOnly
    }

    /// Whether what a call changed is unknown, so the history must scan the whole tree
    /// after it instead of committing the paths the call reports.
    pub fn needs_full_scan(self) -> bool {
        self == Effect::RunsCommands
    }
}

/// What an approval mode does with a call of some [`Effect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Run it without asking.
    Run,
    /// Ask the user first.
    Ask,
    /// The mode does not allow it at all (plan mode and anything not read-only); the
    /// model is not even offered such tools.
    Refuse,
}

impl ApprovalMode {
    /// The approval rule (docs/approval-modes.md), a function of the mode and the call's effect only:
    ///
    /// | mode | read-only | writes files | runs commands |
    /// |---|---|---|---|
    /// | plan | run | refuse | refuse |
    /// | default | run | ask | ask |
    /// | auto-edit | run | run | ask |
    /// | yolo | run | run | run |
    pub fn gate(self, effect: Effect) -> Gate {
        match (self, effect) {
            (_, Effect::ReadOnly) => Gate::Run,
            (ApprovalMode::Plan, _) => Gate::Refuse,
            (ApprovalMode::Default, _) => Gate::Ask,
            (ApprovalMode::AutoEdit, Effect::WritesFiles) => Gate::Run,
            (ApprovalMode::AutoEdit, Effect::RunsCommands) => Gate::Ask,
            (ApprovalMode::Yolo, _) => Gate::Run,
        }
    }

    /// Whether the model is offered tools of this effect in this mode at all.
    pub fn offers(self, effect: Effect) -> bool {
        self.gate(effect) != Gate::Refuse
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
    /// What the call would do; decides, for example, which flag a headless run names.
    pub effect: Effect,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mode × effect combination, written out.
    #[test]
    fn approval_is_a_function_of_mode_and_effect() {
        use ApprovalMode::*;
        use Effect::*;
        let table = [
            (Plan, ReadOnly, Gate::Run),
            (Plan, WritesFiles, Gate::Refuse),
            (Plan, RunsCommands, Gate::Refuse),
            (Default, ReadOnly, Gate::Run),
            (Default, WritesFiles, Gate::Ask),
            (Default, RunsCommands, Gate::Ask),
            (AutoEdit, ReadOnly, Gate::Run),
            (AutoEdit, WritesFiles, Gate::Run),
            (AutoEdit, RunsCommands, Gate::Ask),
            (Yolo, ReadOnly, Gate::Run),
            (Yolo, WritesFiles, Gate::Run),
            (Yolo, RunsCommands, Gate::Run),
        ];
        assert_eq!(table.len(), ApprovalMode::ALL.len() * Effect::ALL.len());
        for (mode, effect, gate) in table {
            assert_eq!(mode.gate(effect), gate, "{mode} × {effect:?}");
            assert_eq!(
                mode.offers(effect),
                gate != Gate::Refuse,
                "{mode} × {effect:?}"
            );
        }
    }

    #[test]
    fn only_commands_need_a_full_scan() {
        assert!(Effect::RunsCommands.needs_full_scan());
        assert!(!Effect::WritesFiles.needs_full_scan());
        assert!(!Effect::ReadOnly.needs_full_scan());
        assert!(Effect::ReadOnly.is_read_only() && !Effect::WritesFiles.is_read_only());
    }

    #[test]
    fn effect_travels_as_snake_case() {
        let request = ApprovalRequest {
            tool_call_id: "c1".into(),
            tool_name: "t".into(),
            effect: Effect::RunsCommands,
            subject: ApprovalSubject::Command {
                command: "ls".into(),
            },
        };
        let json = serde_json::to_value(&request).expect("serialize");
        assert_eq!(json["effect"], "runs_commands");
        let back: ApprovalRequest = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, request);
    }
}
