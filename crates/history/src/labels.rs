//! Finding manual snapshots by label. The commit message format of a snapshot belongs
//! here, so no other crate matches message prefixes.

use crate::{CommitInfo, HistoryError, SessionRepo};

/// The message prefix of a manual snapshot: `🔒 Snapshot: LABEL`.
pub const SNAPSHOT_PREFIX: &str = "🔒 Snapshot: ";

impl SessionRepo {
    /// The snapshot labelled `label`, or (with `None`) the newest manual snapshot.
    pub fn find_snapshot(&self, label: Option<&str>) -> Result<Option<CommitInfo>, HistoryError> {
        let log = self.log()?;
        Ok(log
            .into_iter()
            .find(|c| match c.message.strip_prefix(SNAPSHOT_PREFIX) {
                Some(l) => label.is_none_or(|want| l.trim() == want.trim()),
                None => false,
            }))
    }
}
