//! SQLite persistence: sessions, messages, statistics (nothing else talks SQL).
//!
//! One file, `$XDG_DATA_HOME/safe-coder/sessions.db` (the caller passes the path), in WAL
//! mode with `synchronous=NORMAL` and a busy timeout, so a chat and a `sessions list`
//! in another process can use it at once. Every write is its own short transaction:
//! a message is committed as soon as it is appended, so killing the process loses
//! nothing already written (WAL with `synchronous=NORMAL` survives a process crash;
//! only a power cut can lose the last transactions).

mod error;
mod schema;
mod types;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql, Transaction, TransactionBehavior};
use safe_coder_protocol::{Message, Usage};

pub use error::{ParseStateError, StoreError};
pub use schema::SCHEMA_VERSION;
pub use types::{
    make_title, ListFilter, MessageCounts, ModelUsage, NewSession, SessionRecord, SessionState,
    SessionStats, ToolStats, TITLE_MAX_CHARS,
};

use types::MessageKind;

/// How long a write waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Candidates named in an ambiguous-prefix error, at most.
const MAX_CANDIDATES: usize = 10;

const SESSION_COLUMNS: &str = "id, project, backend, session_dir, base_commit, state, title, \
     provider, model, approval_mode, owner_pid, created_at, updated_at, message_count";

/// The next value of the global activity counter (see the schema).
const NEXT_ACTIVITY: &str = "(SELECT COALESCE(MAX(activity), 0) + 1 FROM sessions)";

/// The session database. Wraps one SQLite connection: `Send` but not `Sync`, so share it
/// between tasks behind a `Mutex`, or open one `Store` per thread (they may coexist,
/// in one process or several).
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating it, its parent directories and its schema if needed) the database
    /// at `path`. New directories get mode 0700 and a new database file 0600: the
    /// conversations in it may hold secrets.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent)?;
        }
        create_private_file(path);
        let open_err = |e: StoreError| match e {
            StoreError::Sqlite(source) => StoreError::Open {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        };
        let conn = Connection::open(path).map_err(|e| open_err(e.into()))?;
        let store = Store {
            conn,
            path: Some(path.to_path_buf()),
        };
        store.configure(true).map_err(open_err)?;
        schema::migrate(&store.conn).map_err(open_err)?;
        Ok(store)
    }

    /// A private database that lives as long as this `Store` (tests, `--no-persist`).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let store = Store {
            conn: Connection::open_in_memory()?,
            path: None,
        };
        store.configure(false)?;
        schema::migrate(&store.conn)?;
        Ok(store)
    }

    fn configure(&self, wal: bool) -> Result<(), StoreError> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        self.conn.set_prepared_statement_cache_capacity(32);
        if wal {
            let mode: String = self
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::NoWal {
                    path: self.path.clone().unwrap_or_default(),
                    mode,
                });
            }
        }
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        Ok(())
    }

    /// The database file, `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version of the open database (always [`SCHEMA_VERSION`] after `open`).
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        schema::user_version(&self.conn)
    }

    /// Runs the migrations again: a no-op on an up-to-date database.
    pub fn migrate(&self) -> Result<(), StoreError> {
        schema::migrate(&self.conn)
    }

    /// Records a new session, `active` and owned by this process.
    pub fn create_session(&self, s: &NewSession) -> Result<(), StoreError> {
        let now = now();
        let sql = format!(
            "INSERT INTO sessions (id, project, backend, session_dir, base_commit, state, \
             provider, model, approval_mode, owner_pid, created_at, updated_at, activity) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, {NEXT_ACTIVITY})"
        );
        let result = self.conn.prepare_cached(&sql)?.execute(params![
            s.id,
            s.project,
            s.backend,
            s.session_dir,
            s.base_commit,
            SessionState::Active,
            s.provider,
            s.model,
            s.approval_mode,
            std::process::id(),
            now,
        ]);
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(s.id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a session to `state`. `Active` records this process as the owner (a resume);
    /// any other state clears the owner.
    pub fn set_state(&self, id: &str, state: SessionState) -> Result<(), StoreError> {
        let owner = (state == SessionState::Active).then(std::process::id);
        let sql = format!(
            "UPDATE sessions SET state = ?2, owner_pid = ?3, updated_at = ?4, \
             activity = {NEXT_ACTIVITY} WHERE id = ?1"
        );
        let n = self
            .conn
            .prepare_cached(&sql)?
            .execute(params![id, state, owner, now()])?;
        found(n, id)
    }

    /// Sets the title, passed through [`make_title`] (blank text clears it). Without a
    /// call, the first user message with text becomes the title.
    pub fn set_title(&self, id: &str, title: &str) -> Result<(), StoreError> {
        self.update_column(id, "title", make_title(title))
    }

    /// Records the commit of the initial snapshot once it exists.
    pub fn set_base_commit(&self, id: &str, commit: &str) -> Result<(), StoreError> {
        self.update_column(id, "base_commit", commit)
    }

    /// After `/model`: what a resume should use.
    pub fn set_model(&self, id: &str, provider: &str, model: &str) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached("UPDATE sessions SET provider = ?2, model = ?3 WHERE id = ?1")?
            .execute(params![id, provider, model])?;
        found(n, id)
    }

    /// After `/approval-mode`: what a resume should use.
    pub fn set_approval_mode(&self, id: &str, mode: &str) -> Result<(), StoreError> {
        self.update_column(id, "approval_mode", mode)
    }

    /// `column` is always one of the literals above, never user input.
    fn update_column(&self, id: &str, column: &str, value: impl ToSql) -> Result<(), StoreError> {
        let sql = format!("UPDATE sessions SET {column} = ?2 WHERE id = ?1");
        let n = self
            .conn
            .prepare_cached(&sql)?
            .execute(params![id, value])?;
        found(n, id)
    }

    /// Marks activity now (appending a message already does).
    pub fn touch(&self, id: &str) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE sessions SET updated_at = ?2, activity = {NEXT_ACTIVITY} WHERE id = ?1"
        );
        let n = self
            .conn
            .prepare_cached(&sql)?
            .execute(params![id, now()])?;
        found(n, id)
    }

    /// The session with this id, or the only one whose id starts with `id_or_prefix`
    /// (like git). `None` when nothing matches (or the prefix is blank); an error naming
    /// the candidates when several do.
    pub fn get_session(&self, id_or_prefix: &str) -> Result<Option<SessionRecord>, StoreError> {
        if id_or_prefix.trim().is_empty() {
            return Ok(None);
        }
        let exact = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
        let record = self
            .conn
            .prepare_cached(&exact)?
            .query_row([id_or_prefix], read_session)
            .optional()?;
        if record.is_some() {
            return Ok(record);
        }
        let mut candidates: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT id FROM sessions WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![id_or_prefix, MAX_CANDIDATES as i64 + 1], |r| {
                r.get(0)
            })?
            .collect::<Result<_, _>>()?;
        match candidates.len() {
            0 => Ok(None),
            1 => {
                let id = candidates.remove(0);
                Ok(self
                    .conn
                    .prepare_cached(&exact)?
                    .query_row([id], read_session)
                    .optional()?)
            }
            _ => {
                if candidates.len() > MAX_CANDIDATES {
                    candidates.truncate(MAX_CANDIDATES);
                    candidates.push("…".to_string());
                }
                Err(StoreError::Ambiguous {
                    prefix: id_or_prefix.to_string(),
                    candidates,
                })
            }
        }
    }

    /// Sessions, newest activity first.
    pub fn list_sessions(&self, filter: ListFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE 1");
        if filter.project.is_some() {
            sql.push_str(" AND project = ?2");
        }
        if filter.unsynced_only {
            sql.push_str(" AND state IN ('active', 'ended')");
        }
        sql.push_str(" ORDER BY activity DESC LIMIT ?1");
        let limit = filter
            .limit
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = match &filter.project {
            Some(project) => stmt.query_map(params![limit, project], read_session)?,
            None => stmt.query_map(params![limit], read_session)?,
        };
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The project's session with the newest activity, whatever its state
    /// (`chat --resume` without an id).
    pub fn latest_for_project(&self, project: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .list_sessions(ListFilter::all().project(project).limit(1))?
            .pop())
    }

    /// Saves one message at the end of the conversation, committed before this returns.
    /// Returns its `seq`: its 0-based position, the index `load_messages` will give it.
    /// The first user message with text becomes the title unless one is set.
    pub fn append_message(&self, session_id: &str, message: &Message) -> Result<i64, StoreError> {
        let body = serde_json::to_string(message).map_err(StoreError::Encode)?;
        let kind = MessageKind::of(message);
        let title = match kind {
            MessageKind::User => make_title(&message.text()),
            _ => None,
        };
        let now = now();
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let sql = format!(
            "UPDATE sessions SET message_count = message_count + 1, updated_at = ?2, \
             activity = {NEXT_ACTIVITY}, \
             user_messages = user_messages + (?3 = 'user'), \
             assistant_messages = assistant_messages + (?3 = 'assistant'), \
             tool_result_messages = tool_result_messages + (?3 = 'tool_results'), \
             title = COALESCE(title, ?4) \
             WHERE id = ?1 RETURNING message_count - 1"
        );
        let seq: i64 = tx
            .prepare_cached(&sql)?
            .query_row(params![session_id, now, kind.as_str(), title], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(session_id.to_string()))?;
        insert_message(&tx, session_id, seq, kind, &body, now)?;
        tx.commit()?;
        Ok(seq)
    }

    /// The conversation, in order.
    pub fn load_messages(&self, session_id: &str) -> Result<Vec<Message>, StoreError> {
        let count: i64 = self
            .conn
            .prepare_cached("SELECT message_count FROM sessions WHERE id = ?1")?
            .query_row([session_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(session_id.to_string()))?;
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, body FROM messages WHERE session_id = ?1 ORDER BY seq")?;
        let mut rows = stmt.query([session_id])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let body = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let message =
                serde_json::from_str(body).map_err(|source| StoreError::CorruptMessage {
                    session_id: session_id.to_string(),
                    seq,
                    source,
                })?;
            out.push(message);
        }
        Ok(out)
    }

    /// Replaces the whole conversation in one transaction (after compaction or `/clear`).
    /// The lifetime message counts in [`SessionStats`] are not changed.
    pub fn replace_messages(
        &self,
        session_id: &str,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let bodies = messages
            .iter()
            .map(|m| Ok((MessageKind::of(m), serde_json::to_string(m)?)))
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(StoreError::Encode)?;
        let now = now();
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let sql = format!(
            "UPDATE sessions SET message_count = ?2, updated_at = ?3, \
             activity = {NEXT_ACTIVITY} WHERE id = ?1"
        );
        let n = tx
            .prepare_cached(&sql)?
            .execute(params![session_id, bodies.len() as i64, now])?;
        found(n, session_id)?;
        tx.prepare_cached("DELETE FROM messages WHERE session_id = ?1")?
            .execute([session_id])?;
        for (seq, (kind, body)) in bodies.iter().enumerate() {
            insert_message(&tx, session_id, seq as i64, *kind, body, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records one finished tool call for `/stats`.
    pub fn record_tool_call(
        &self,
        session_id: &str,
        tool: &str,
        ok: bool,
        duration_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO tool_calls (session_id, tool, ok, duration_ms, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![session_id, tool, ok, to_i64(duration_ms), now()])
            .map_err(|e| not_found_on_fk(e, session_id))?;
        Ok(())
    }

    /// Records the token usage the API reported for one request.
    pub fn record_usage(
        &self,
        session_id: &str,
        model: &str,
        usage: Usage,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO usage (session_id, model, input_tokens, output_tokens, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                session_id,
                model,
                to_i64(usage.input_tokens),
                to_i64(usage.output_tokens),
                now()
            ])
            .map_err(|e| not_found_on_fk(e, session_id))?;
        Ok(())
    }

    /// Everything `/stats` shows.
    pub fn stats(&self, session_id: &str) -> Result<SessionStats, StoreError> {
        let mut stats = self
            .conn
            .prepare_cached(
                "SELECT created_at, updated_at, message_count, user_messages, \
                 assistant_messages, tool_result_messages FROM sessions WHERE id = ?1",
            )?
            .query_row([session_id], |r| {
                Ok(SessionStats {
                    session_id: session_id.to_string(),
                    started_at: r.get(0)?,
                    last_activity: r.get(1)?,
                    messages: MessageCounts {
                        in_context: to_u64(r.get(2)?),
                        user: to_u64(r.get(3)?),
                        assistant: to_u64(r.get(4)?),
                        tool_results: to_u64(r.get(5)?),
                    },
                    ..SessionStats::default()
                })
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound(session_id.to_string()))?;

        stats.tools = self
            .conn
            .prepare_cached(
                "SELECT tool, COUNT(*), SUM(ok), SUM(duration_ms) FROM tool_calls \
                 WHERE session_id = ?1 GROUP BY tool ORDER BY COUNT(*) DESC, tool",
            )?
            .query_map([session_id], |r| {
                let calls = to_u64(r.get(1)?);
                let total_ms = to_u64(r.get(3)?);
                Ok(ToolStats {
                    tool: r.get(0)?,
                    calls,
                    successes: to_u64(r.get(2)?),
                    total_ms,
                    avg_ms: total_ms.checked_div(calls).unwrap_or(0),
                })
            })?
            .collect::<Result<_, _>>()?;
        stats.tool_calls = stats.tools.iter().map(|t| t.calls).sum();
        stats.tool_successes = stats.tools.iter().map(|t| t.successes).sum();

        stats.models = self
            .conn
            .prepare_cached(
                "SELECT model, COUNT(*), SUM(input_tokens), SUM(output_tokens) FROM usage \
                 WHERE session_id = ?1 GROUP BY model ORDER BY MIN(id)",
            )?
            .query_map([session_id], |r| {
                Ok(ModelUsage {
                    model: r.get(0)?,
                    requests: to_u64(r.get(1)?),
                    input_tokens: to_u64(r.get(2)?),
                    output_tokens: to_u64(r.get(3)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        for m in &stats.models {
            stats.tokens.add(Usage {
                input_tokens: m.input_tokens,
                output_tokens: m.output_tokens,
            });
        }
        Ok(stats)
    }

    /// Removes a session with its messages and statistics (not its directory: that is
    /// the caller's).
    pub fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        // The foreign keys cascade too; explicit deletes keep this right even on a
        // connection opened without `foreign_keys`.
        for table in ["messages", "tool_calls", "usage"] {
            tx.prepare_cached(&format!("DELETE FROM {table} WHERE session_id = ?1"))?
                .execute([id])?;
        }
        let n = tx
            .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
            .execute([id])?;
        found(n, id)?;
        tx.commit()?;
        Ok(())
    }
}

fn insert_message(
    conn: &Connection,
    session_id: &str,
    seq: i64,
    kind: MessageKind,
    body: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO messages (session_id, seq, kind, body, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![session_id, seq, kind.as_str(), body, now])?;
    Ok(())
}

fn read_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        project: r.get(1)?,
        backend: r.get(2)?,
        session_dir: r.get(3)?,
        base_commit: r.get(4)?,
        state: r.get(5)?,
        title: r.get(6)?,
        provider: r.get(7)?,
        model: r.get(8)?,
        approval_mode: r.get(9)?,
        owner_pid: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        message_count: r.get(13)?,
    })
}

impl ToSql for SessionState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for SessionState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: ParseStateError| FromSqlError::Other(Box::new(e)))
    }
}

fn found(rows_changed: usize, id: &str) -> Result<(), StoreError> {
    if rows_changed == 0 {
        Err(StoreError::NotFound(id.to_string()))
    } else {
        Ok(())
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// An insert into a per-session table fails its foreign key only when the session is
/// missing.
fn not_found_on_fk(e: rusqlite::Error, session_id: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::NotFound(session_id.to_string())
        }
        _ => e.into(),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates the database file with mode 0600 if it does not exist (SQLite gives its
/// `-wal` and `-shm` files the same mode). Failure is left for SQLite to report.
fn create_private_file(path: &Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let _ = options.open(path);
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: Option<i64>) -> u64 {
    v.map_or(0, |v| u64::try_from(v).unwrap_or(0))
}
