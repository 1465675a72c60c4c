//! Git tracking of a session: snapshots, auto-commits, change sets, rollback, shadow
//! repo, sync back.
//!
//! A [`SessionRepo`] is a git repository whose work tree is either a sandbox copy of the
//! project ([`SessionRepo::create_sandbox_copy`]) or the project itself with the git dir
//! kept outside it ([`SessionRepo::create_shadow`]). Every git invocation is isolated
//! from the user's git configuration (see `git.rs`). The hot paths (the initial
//! snapshot, commits, refs) write git objects directly; git itself is used for the
//! index, scans, diffs and checkouts.

mod beneath;
mod borrow;
mod error;
mod git;
mod index;
mod labels;
mod objects;
mod pack;
mod paths;
mod repo;
mod snapshot;
mod stage;
mod statcache;
pub mod sync;
mod upper;

pub use error::HistoryError;
pub use labels::SNAPSHOT_PREFIX;
pub use repo::{CommitInfo, CommitOutcome, SessionRepo, DEFAULT_MAX_FILE_BYTES};
pub use snapshot::SnapshotStats;
pub use statcache::{prune as prune_stat_cache, PruneReport, STORE_MAX_IDLE};

/// Message of the first commit of a sandbox copy.
pub const INITIAL_MESSAGE: &str = "Initial snapshot - Safe Coder VM";
/// Message of the first commit of a shadow repository (the `direct` backend).
pub const SHADOW_MESSAGE: &str = "Snapshot: Session start";
/// The fixed identity of every commit; the user's git config is never read.
pub const AUTHOR_NAME: &str = "Safe Coder";
pub const AUTHOR_EMAIL: &str = "safe-coder@localhost";

/// The git blob id of `data` (sha1 of `blob <len>\0` + bytes), in hex.
pub fn blob_id(data: &[u8]) -> String {
    objects::hex(&objects::hash_object("blob", data))
}
