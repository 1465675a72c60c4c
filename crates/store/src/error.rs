use std::path::PathBuf;

use rusqlite::ErrorCode;

/// Everything that can go wrong in the store, each as one sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not create the directory {} for the session database: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("could not open the session database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },

    #[error(
        "the session database {} refused WAL mode (its journal mode stayed {mode}); keep it on \
         a local filesystem",
        path.display()
    )]
    NoWal { path: PathBuf, mode: String },

    #[error(
        "the session database has schema version {found}, but this safe-coder only knows up to \
         version {known}; upgrade safe-coder or use another $XDG_DATA_HOME"
    )]
    SchemaTooNew { found: i64, known: i64 },

    #[error("no session has the id {0:?} (see `safe-coder sessions list`)")]
    NotFound(String),

    #[error("the session id prefix {prefix:?} is ambiguous: it matches {}; type more of the id", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },

    #[error("a session with the id {0:?} already exists")]
    Duplicate(String),

    #[error("the session database is busy (another safe-coder process held its lock for more than {0} seconds); try again")]
    Busy(u64),

    #[error("{0}")]
    BadState(#[from] ParseStateError),

    #[error("message {seq} of session {session_id} in the database is not valid JSON for a message: {source}")]
    CorruptMessage {
        session_id: String,
        seq: i64,
        source: serde_json::Error,
    },

    #[error("could not encode a message as JSON: {0}")]
    Encode(serde_json::Error),

    #[error("the session database failed: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                StoreError::Busy(crate::BUSY_TIMEOUT.as_secs())
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// A session state name that is not one of `active`, `ended`, `synced`, `discarded`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a session state (expected active, ended, synced or discarded)")]
pub struct ParseStateError(pub String);
