use serde::{Deserialize, Serialize};

use crate::{ApprovalDecision, ApprovalMode};

/// What a front end asks of a conversation: the other half of the queue pair whose
/// outgoing half is [`Event`](crate::Event). Front ends (line mode, `exec`, the TUI) only
/// turn what the user does into `Op`s and render the events that come back; every policy
/// (approvals, slash commands, review, sync) lives in the core.
///
/// The core handles ops in order, one at a time, except [`Op::Interrupt`] and
/// [`Op::Approval`], which are taken while a turn runs. After each op that the user
/// started the core emits [`Event::Ready`](crate::Event::Ready).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A line as the user typed it: a prompt (with `@path`s), a `/command` or a `!cmd`.
    UserInput {
        text: String,
    },
    /// A message for the model (`@path`s expanded), never a command (`exec`'s task).
    Prompt {
        text: String,
    },
    /// `!cmd`: run a command in the sandbox yourself.
    Shell {
        command: String,
    },
    /// A slash command line, with or without its leading `/`.
    Slash {
        command: String,
    },
    /// The user's answer to [`Event::ApprovalRequested`](crate::Event::ApprovalRequested).
    Approval {
        call_id: String,
        decision: ApprovalDecision,
    },
    /// Cancel what runs now (a turn, a `!cmd`, a compaction). Ignored when idle.
    Interrupt,
    /// The user's verdict on [`Event::ReviewRequested`](crate::Event::ReviewRequested).
    Review {
        decision: ReviewDecision,
    },
    /// Review and sync now, mid-session (`/sync`).
    SyncNow,
    SetModel {
        model: String,
    },
    SetApprovalMode {
        mode: ApprovalMode,
    },
    /// Completion candidates for the `@path` or `/command` being typed; answered by
    /// [`Event::Completions`](crate::Event::Completions).
    Complete {
        text: String,
    },
    /// `safe-coder run`: run an interactive command (an agent CLI) in the sandbox until
    /// it exits, with the terminal passed through [`Op::TerminalInput`] and
    /// [`Event::TerminalOutput`](crate::Event::TerminalOutput); see docs/run.md.
    Run {
        run: RunRequest,
    },
    /// Bytes typed into the running command's terminal (taken at once, like
    /// [`Op::Interrupt`]).
    TerminalInput {
        data: Vec<u8>,
    },
    /// The user's terminal changed size: the running command's terminal follows.
    TerminalResize {
        rows: u16,
        cols: u16,
    },
    /// End the session: the end-of-session review (if anything changed), then
    /// [`Event::SessionEnded`](crate::Event::SessionEnded) and the end of the stream.
    Shutdown,
}

/// The user's verdict on a change set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ReviewDecision {
    /// Sync every change (conflicts stay in the session).
    AcceptAll,
    /// Drop every change.
    RejectAll,
    /// Sync these paths. The others are rejected (reverted in the session), or with
    /// `keep_rest` left in the session for a later sync.
    Pick {
        paths: Vec<String>,
        #[serde(default)]
        keep_rest: bool,
    },
    /// Sync nothing now; the session keeps the changes for `sessions sync`.
    Keep,
}

/// What [`Op::Run`] runs. Credentials travel by name only: the core reads the values of
/// `env` from its own environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Names of variables passed through on purpose (`--env NAME`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Hosts the command may reach through the proxy (`HOST[:PORT]`, `*.DOMAIN`).
    #[serde(default)]
    pub allow_net: Vec<String>,
    /// Host paths to show inside (`--mount PATH[:ro]`): the path and read-only.
    #[serde(default)]
    pub mounts: Vec<(String, bool)>,
    /// Rows and columns of the terminal to give the command; `None`: no terminal (its
    /// stdin and output are a socket).
    #[serde(default)]
    pub terminal: Option<(u16, u16)>,
    /// The `safe-coder` binary, shown inside the sandbox to run the network forwarder
    /// (`safe-coder __net-forward`); needed only with `allow_net`.
    #[serde(default)]
    pub forwarder: Option<String>,
}
