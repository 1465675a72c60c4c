//! Schema migrations, versioned with `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the database from version `i` to version `i + 1`. A migration is
//! never edited once released: a change to the schema is a new entry at the end.

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: sessions, their messages, tool calls and token usage.
    r#"
    CREATE TABLE sessions (
        id             TEXT PRIMARY KEY NOT NULL,
        project        TEXT NOT NULL,
        backend        TEXT NOT NULL,
        session_dir    TEXT NOT NULL,
        base_commit    TEXT,
        state          TEXT NOT NULL,
        title          TEXT,
        provider       TEXT NOT NULL,
        model          TEXT NOT NULL,
        approval_mode  TEXT NOT NULL,
        owner_pid      INTEGER,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        -- global counter, bumped on every activity: orders sessions exactly even when
        -- several were active within the same second
        activity       INTEGER NOT NULL,
        -- messages in the conversation now (replace_messages lowers it)
        message_count  INTEGER NOT NULL DEFAULT 0,
        -- messages ever appended, by kind (compaction does not lower them)
        user_messages        INTEGER NOT NULL DEFAULT 0,
        assistant_messages   INTEGER NOT NULL DEFAULT 0,
        tool_result_messages INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_by_activity ON sessions (activity);
    CREATE INDEX sessions_by_project ON sessions (project, activity);

    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY,
        session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        body        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        UNIQUE (session_id, seq)
    );

    CREATE TABLE tool_calls (
        id           INTEGER PRIMARY KEY,
        session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        tool         TEXT NOT NULL,
        ok           INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        created_at   INTEGER NOT NULL
    );
    CREATE INDEX tool_calls_by_session ON tool_calls (session_id);

    CREATE TABLE usage (
        id             INTEGER PRIMARY KEY,
        session_id     TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        model          TEXT NOT NULL,
        input_tokens   INTEGER NOT NULL,
        output_tokens  INTEGER NOT NULL,
        created_at     INTEGER NOT NULL
    );
    CREATE INDEX usage_by_session ON usage (session_id);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the database up to [`SCHEMA_VERSION`]. Safe to run any number of times and
/// from several processes at once: the version is read again under the write lock.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found = user_version(conn)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let found = user_version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let start = usize::try_from(found).unwrap_or(0);
    for sql in &MIGRATIONS[start..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
