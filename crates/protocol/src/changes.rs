use serde::{Deserialize, Serialize};

use crate::text::escape_control;

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
    /// When `conflict` is set for another reason than a host edit (a directory or a
    /// symlink in the way on the host), that reason, one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_reason: Option<String>,
    /// The file steers the next session (`.safe-coder/**`, `SAFECODER.md`, `AGENTS.md`
    /// at any depth): accepting it changes what a later agent is told or allowed. Front
    /// ends flag it and ask a second time before "accept all" takes it.
    #[serde(default)]
    pub steers_next_session: bool,
    /// The agent's version is a symlink (for deletions: the removed entry was one). A
    /// symlink can point anywhere on the host, so it is flagged like a steering file.
    #[serde(default)]
    pub is_symlink: bool,
}

impl FileChange {
    /// Whether the review must flag this change and confirm it separately.
    pub fn needs_second_look(&self) -> bool {
        self.steers_next_session || self.is_symlink
    }
}

/// Whether a change to `path` (relative, `/`-separated) steers the next session: any
/// path through a `.safe-coder` directory (config, custom commands) and any memory file
/// (`SAFECODER.md`, `AGENTS.md`), at any depth. Compared without regard to ASCII case,
/// since the host's file system may not tell them apart.
pub fn steers_next_session(path: &str) -> bool {
    let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        if part.eq_ignore_ascii_case(".safe-coder") {
            return true;
        }
        if last
            && (part.eq_ignore_ascii_case("SAFECODER.md") || part.eq_ignore_ascii_case("AGENTS.md"))
        {
            return true;
        }
    }
    false
}

/// A path of the session's work tree that is not kept in its history (so never synced),
/// and why: a nested repository's git dir, a name git cannot store, a file over the size
/// limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOutPath {
    /// Relative to the project root; bytes that are not UTF-8 are shown as U+FFFD.
    pub path: String,
    /// One sentence, e.g. "a nested repository's git directory; its files are kept as
    /// plain files".
    pub reason: String,
}

/// The change set a session would sync back to the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub files: Vec<FileChange>,
    /// Paths of the work tree that the history does not hold (and sync cannot carry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOutPath>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The change summary shown at review, every name escaped (see [`crate::text`]):
    ///
    /// ```text
    /// Changed 2 file(s):
    ///   - src/main.rs (modified)
    ///   - AGENTS.md (added, ⚠ steers the next session)
    /// ```
    ///
    /// followed, when some paths could not be kept, by a "Not kept in the history" list.
    pub fn summary_text(&self) -> String {
        let mut out = format!("Changed {} file(s):\n", self.files.len());
        for f in &self.files {
            out.push_str("  - ");
            out.push_str(&escape_control(&f.path));
            out.push_str(" (");
            out.push_str(f.kind.as_str());
            if f.conflict {
                match &f.conflict_reason {
                    Some(why) => {
                        out.push_str(", CANNOT SYNC: ");
                        out.push_str(&escape_control(why));
                    }
                    None => out.push_str(", CONFLICT: changed on the host since the session began"),
                }
            }
            if f.steers_next_session {
                out.push_str(", ⚠ steers the next session");
            }
            if f.is_symlink {
                out.push_str(", ⚠ symlink");
            }
            out.push_str(")\n");
        }
        if self.files.iter().any(FileChange::needs_second_look) {
            out.push_str(
                "⚠ Marked files change what the next session is told or allowed, or point \
                 outside the file: check them before accepting.\n",
            );
        }
        if !self.left_out.is_empty() {
            out.push_str(&format!(
                "Not kept in the history ({}), so not synced:\n",
                self.left_out.len()
            ));
            for l in &self.left_out {
                out.push_str("  - ");
                out.push_str(&escape_control(&l.path));
                out.push_str(": ");
                out.push_str(&escape_control(&l.reason));
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str) -> FileChange {
        FileChange {
            path: path.into(),
            kind: ChangeKind::Added,
            executable: false,
            additions: 1,
            deletions: 0,
            conflict: false,
            conflict_reason: None,
            steers_next_session: steers_next_session(path),
            is_symlink: false,
        }
    }

    #[test]
    fn steering_paths() {
        for p in [
            ".safe-coder/config.toml",
            ".safe-coder/commands/x.md",
            "sub/.safe-coder/config.toml",
            "SAFECODER.md",
            "AGENTS.md",
            "deep/er/AGENTS.md",
            "agents.md",
        ] {
            assert!(steers_next_session(p), "{p}");
        }
        for p in [
            "src/main.rs",
            "AGENTS.md.bak",
            "docs/SAFECODER.md.txt",
            "safe-coder/x",
        ] {
            assert!(!steers_next_session(p), "{p}");
        }
    }

    #[test]
    fn summary_flags_and_escapes() {
        let mut link = change("link");
        link.is_symlink = true;
        let cs = ChangeSet {
            files: vec![change("a\x1b[2K\rb.txt"), change("AGENTS.md"), link],
            left_out: vec![LeftOutPath {
                path: "sub/.git".into(),
                reason: "a nested repository".into(),
            }],
        };
        let text = cs.summary_text();
        assert!(text.contains("  - a\\x1b[2K\\rb.txt (added)\n"), "{text}");
        assert!(text.contains("AGENTS.md (added, ⚠ steers the next session)"));
        assert!(text.contains("link (added, ⚠ symlink)"));
        assert!(text.contains("  - sub/.git: a nested repository\n"));
        assert!(!text.contains('\x1b') && !text.contains('\r'));
    }

    #[test]
    fn old_records_still_parse() {
        let json = r#"{"files":[{"path":"a","kind":"added","executable":false,"additions":1,"deletions":0,"conflict":false}]}"#;
        let cs: ChangeSet = serde_json::from_str(json).expect("parses");
        assert!(!cs.files[0].steers_next_session && !cs.files[0].is_symlink);
        assert!(cs.left_out.is_empty());
    }
}
