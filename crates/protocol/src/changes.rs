use serde::{Deserialize, Serialize};

/// How one file differs between the session's base snapshot and its current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    /// Only the executable bit changed.
    ModeChanged,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
            ChangeKind::ModeChanged => "mode changed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Relative to the project root, with `/` separators.
    pub path: String,
    pub kind: ChangeKind,
    /// Whether the agent's version is executable (false for deletions).
    pub executable: bool,
    pub additions: u32,
    pub deletions: u32,
    /// The host file changed since the session began: syncing it would overwrite the
    /// user's work, so it is never synced.
    pub conflict: bool,
}

/// The change set a session would sync back to the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub files: Vec<FileChange>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The summary users know from spec/02:
    ///
    /// ```text
    /// Changed 2 file(s):
    ///   - src/main.rs (modified)
    ///   - old.rs (deleted)
    /// ```
    pub fn summary_text(&self) -> String {
        let mut out = format!("Changed {} file(s):\n", self.files.len());
        for f in &self.files {
            out.push_str("  - ");
            out.push_str(&f.path);
            out.push_str(" (");
            out.push_str(f.kind.as_str());
            if f.conflict {
                out.push_str(", CONFLICT: changed on the host since the session began");
            }
            out.push_str(")\n");
        }
        out
    }
}
