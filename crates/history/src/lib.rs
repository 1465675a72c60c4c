//! Git tracking of a session: snapshots, auto-commits, change sets, rollback, shadow repo, sync back
