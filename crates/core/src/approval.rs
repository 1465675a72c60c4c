use async_trait::async_trait;
use safe_coder_protocol::{ApprovalDecision, ApprovalMode, ApprovalRequest, Effect, Gate};

/// Asks the user whether a tool call may run. Line mode asks on the terminal, the TUI
/// shows a dialog, `exec` cannot ask at all ([`HeadlessApprover`]).
#[async_trait]
pub trait Approver: Send + Sync {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision;
}

/// For `exec`: nothing can be asked, so a call that needs asking is refused with a
/// result that says so (docs/approval-modes.md), naming the least permissive mode that would have
/// let the call run.
pub struct HeadlessApprover {
    pub mode: ApprovalMode,
}

#[async_trait]
impl Approver for HeadlessApprover {
    async fn approve(&self, request: ApprovalRequest) -> ApprovalDecision {
        ApprovalDecision::DenyWithReason {
            reason: format!(
                "{} needs the user's approval in approval mode '{}', and this headless run cannot ask; the user can rerun with {}",
                request.tool_name,
                self.mode,
                flag_that_allows(request.effect)
            ),
        }
    }
}

/// The `--approval-mode` flag that runs a call of `effect` without asking: the least
/// permissive such mode, and yolo when that is not already it.
fn flag_that_allows(effect: Effect) -> String {
    let mut modes = ApprovalMode::ALL
        .into_iter()
        .filter(|m| m.gate(effect) == Gate::Run);
    match (modes.next(), modes.next_back()) {
        (Some(first), Some(last)) if first != last => {
            format!("--approval-mode {first} (or {last})")
        }
        (Some(only), _) => format!("--approval-mode {only}"),
        (None, _) => "a mode that allows it".to_string(),
    }
}

/// What `mode` does with a call of `effect`: run it, ask first, or refuse it (plan mode
/// and anything not read-only). Never a function of the tool's name; the table is
/// [`ApprovalMode::gate`], shared with the tool registry, which offers the model only
/// the tools a mode does not refuse.
pub fn needs_approval(mode: ApprovalMode, effect: Effect) -> Gate {
    mode.gate(effect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safe_coder_protocol::ApprovalSubject;

    #[test]
    fn every_mode_and_effect() {
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
        assert_eq!(table.len(), 12);
        for (mode, effect, gate) in table {
            assert_eq!(needs_approval(mode, effect), gate, "{mode} × {effect:?}");
        }
    }

    #[tokio::test]
    async fn headless_refusal_names_the_flag_for_the_effect() {
        let ask = |effect| async move {
            let approver = HeadlessApprover {
                mode: ApprovalMode::Default,
            };
            let request = ApprovalRequest {
                tool_call_id: "c1".into(),
                tool_name: "some_tool".into(),
                effect,
                subject: ApprovalSubject::Command {
                    command: "x".into(),
                },
            };
            match approver.approve(request).await {
                ApprovalDecision::DenyWithReason { reason } => reason,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            ask(Effect::RunsCommands).await,
            "some_tool needs the user's approval in approval mode 'default', and this headless \
             run cannot ask; the user can rerun with --approval-mode yolo"
        );
        assert!(ask(Effect::WritesFiles)
            .await
            .ends_with("the user can rerun with --approval-mode auto-edit (or yolo)"));
    }
}
