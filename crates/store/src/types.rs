use std::fmt;
use std::str::FromStr;

use safe_coder_protocol::{ContentBlock, Message, Role, Usage};
use serde::{Deserialize, Serialize};

use crate::ParseStateError;

/// Where a session is in its life (docs/sessions.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// A chat or exec is working in it now, or was when it crashed.
    Active,
    /// The process ended and left work that was not synced back.
    Ended,
    /// Its changes were synced back (or there were none): nothing left to do.
    Synced,
    /// The user threw its work away.
    Discarded,
}

impl SessionState {
    pub const ALL: [SessionState; 4] = [
        SessionState::Active,
        SessionState::Ended,
        SessionState::Synced,
        SessionState::Discarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Ended => "ended",
            SessionState::Synced => "synced",
            SessionState::Discarded => "discarded",
        }
    }

    /// Whether the session may still hold work that is not on the host (`sessions list`).
    pub fn holds_unsynced_work(self) -> bool {
        matches!(self, SessionState::Active | SessionState::Ended)
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_string()))
    }
}

/// What `create_session` records. Paths are stored as (lossy) UTF-8 strings; pass the
/// project path canonicalized, since `latest_for_project` and the project filter compare
/// it byte for byte.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSession {
    pub id: String,
    pub project: String,
    pub backend: String,
    pub session_dir: String,
    /// The commit of the initial snapshot, when already known (see `set_base_commit`).
    pub base_commit: Option<String>,
    pub provider: String,
    pub model: String,
    pub approval_mode: String,
}

/// One stored session, as `sessions list --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub project: String,
    pub backend: String,
    pub session_dir: String,
    pub base_commit: Option<String>,
    pub state: SessionState,
    /// The first user message, truncated (see [`make_title`](crate::make_title)).
    pub title: Option<String>,
    pub provider: String,
    pub model: String,
    pub approval_mode: String,
    /// The process that created or last resumed the session, while it is `active`.
    pub owner_pid: Option<u32>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last activity (a message, `touch`, a state or title change).
    pub updated_at: i64,
    /// Messages in the conversation now.
    pub message_count: i64,
}

impl SessionRecord {
    /// Whether the owner process recorded for this `active` session still exists, i.e.
    /// whether a live chat holds it (rather than a crashed one). Checks `/proc`, so it is
    /// Linux-only (false elsewhere) and can be fooled by a reused process id.
    pub fn owner_alive(&self) -> bool {
        match (self.state, self.owner_pid) {
            (SessionState::Active, Some(pid)) => {
                pid == std::process::id()
                    || std::path::Path::new("/proc").join(pid.to_string()).exists()
            }
            _ => false,
        }
    }
}

/// Which sessions `list_sessions` returns; they always come newest activity first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only sessions that may hold unsynced work (`active` or `ended`).
    pub unsynced_only: bool,
    /// Only sessions of this project path (compared exactly).
    pub project: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl ListFilter {
    /// Every session.
    pub fn all() -> Self {
        ListFilter::default()
    }

    /// Sessions still holding unsynced work (`active` or `ended`).
    pub fn unsynced() -> Self {
        ListFilter {
            unsynced_only: true,
            ..ListFilter::default()
        }
    }

    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Messages appended over the session's life, by kind. Compaction and `/clear` replace
/// the conversation but do not lower these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    /// User messages with text (prompts, `@file`, `!cmd` output).
    pub user: u64,
    pub assistant: u64,
    /// User-role messages holding only tool results.
    pub tool_results: u64,
    /// Messages in the conversation now.
    pub in_context: u64,
}

/// Calls of one tool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolStats {
    pub tool: String,
    pub calls: u64,
    pub successes: u64,
    pub total_ms: u64,
    pub avg_ms: u64,
}

impl ToolStats {
    /// Successes over calls, 0.0 to 1.0.
    pub fn success_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.successes as f64 / self.calls as f64
        }
    }
}

/// Tokens used with one model (cost is computed by the caller from its price table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What `/stats` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    pub session_id: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub last_activity: i64,
    pub messages: MessageCounts,
    /// Per tool, most called first.
    pub tools: Vec<ToolStats>,
    pub tool_calls: u64,
    pub tool_successes: u64,
    /// Per model, in the order first used.
    pub models: Vec<ModelUsage>,
    pub tokens: Usage,
}

impl SessionStats {
    pub fn duration_secs(&self) -> i64 {
        (self.last_activity - self.started_at).max(0)
    }
}

/// How a message is counted in [`MessageCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageKind {
    User,
    Assistant,
    ToolResults,
}

impl MessageKind {
    pub(crate) fn of(message: &Message) -> Self {
        match message.role {
            Role::Assistant => MessageKind::Assistant,
            Role::User => {
                let only_results = !message.content.is_empty()
                    && message
                        .content
                        .iter()
                        .all(|b| matches!(b, ContentBlock::ToolResult { .. }));
                if only_results {
                    MessageKind::ToolResults
                } else {
                    MessageKind::User
                }
            }
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MessageKind::User => "user",
            MessageKind::Assistant => "assistant",
            MessageKind::ToolResults => "tool_results",
        }
    }
}

/// Longest title kept, in characters.
pub const TITLE_MAX_CHARS: usize = 80;

/// A session title from a user message: whitespace collapsed to single spaces, cut to
/// [`TITLE_MAX_CHARS`] characters with an ellipsis. `None` for blank text.
pub fn make_title(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = 0usize;
    for word in text.split_whitespace() {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        out.push_str(word);
        chars += word.chars().count();
        if chars > TITLE_MAX_CHARS {
            break;
        }
    }
    if out.is_empty() {
        return None;
    }
    if chars > TITLE_MAX_CHARS {
        let mut cut: String = out.chars().take(TITLE_MAX_CHARS - 1).collect();
        cut.truncate(cut.trim_end().len());
        cut.push('…');
        return Some(cut);
    }
    Some(out)
}
