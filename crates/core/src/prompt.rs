use safe_coder_protocol::ApprovalMode;

/// The system prompt: who the agent is, where it works, the approval mode, and the
/// user's memory files (already formatted by the caller). `syncs_back`: the agent works
/// on a copy that reaches the user's files only through their review.
pub fn system_prompt(
    agent_root: &str,
    backend: &str,
    syncs_back: bool,
    mode: ApprovalMode,
    memory: &str,
) -> String {
    let mut p = format!(
        "You are Safe Coder, an AI coding agent working in a terminal on the user's project.\n\
         The project root is {agent_root}. Tool paths are relative to it (absolute paths inside it also work); \
         paths outside it are refused.\n\
         You work in the `{backend}` sandbox backend: every change you make is recorded as a git commit \
         that the user can inspect and roll back{}.\n\
         Use the tools to read files before editing them, make precise edits with edit_file, and run \
         commands with bash to build and test. Keep answers short and say what you changed.\n",
        if syncs_back {
            ", and the user's own files change only when they accept your changes at the end"
        } else {
            ""
        }
    );
    if mode == ApprovalMode::Plan {
        p.push_str(
            "\nPLAN MODE: you may only read (read_file). You cannot write, edit or run commands in this mode. \
             Study the code and propose a concrete, step-by-step plan; the user will switch modes to let you carry it out.\n",
        );
    }
    if !memory.trim().is_empty() {
        p.push_str("\n# Instructions from the user's memory files\n\n");
        p.push_str(memory);
        if !memory.ends_with('\n') {
            p.push('\n');
        }
    }
    p
}
