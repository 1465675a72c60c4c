use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("git is not installed; Safe Coder needs git to track the agent's changes: install it (e.g. apt-get install git)")]
    GitMissing,
    #[error("git {command} failed: {stderr}")]
    Git { command: String, stderr: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the exclude pattern `{pattern}` is not a valid glob: {reason}")]
    BadExclude { pattern: String, reason: String },
    #[error(
        "the path `{0}` is not allowed: it must be relative to the project, without `..` or `.git`"
    )]
    BadPath(String),
    #[error("`{0}` is not a commit of this session's history")]
    UnknownCommit(String),
    #[error("the project {0} does not exist or is not a directory")]
    NoProject(PathBuf),
    #[error("{0} already exists and is not empty; a new session needs a fresh directory")]
    NotEmpty(PathBuf),
    #[error("{0} is not a Safe Coder session repository")]
    NotARepo(PathBuf),
    #[error("the session repository is damaged: {0}")]
    Corrupt(String),
    #[error("the session's stored copy of {path} does not match its recorded hash, so nothing of it was written; the session's disk may be damaged: check it, then sync again")]
    StoredCopyMismatch { path: String },
    /// The overlay workspace could not be mounted (the sentence says why).
    #[error("{0}")]
    Workspace(String),
    #[error("{path} changed while it was being copied; try again")]
    ChangedDuringCopy { path: PathBuf },
}

impl HistoryError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HistoryError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attaches a short context to an I/O result.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, HistoryError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, HistoryError> {
        self.map_err(|e| HistoryError::io(what(), e))
    }
}
