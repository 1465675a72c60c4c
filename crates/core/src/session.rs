//! A session's life (DESIGN §5): the session directory under the data dir, the sandbox,
//! the git history, the store record, review and sync back, and recovery after a crash.
//!
//! Layout of `<data_dir>/sessions/<id>/`:
//! - `work/`: the sandbox copy with its own `.git` (every backend but `direct`);
//! - `shadow.git/`: the shadow repository whose work tree is the project (`direct`);
//! - `owner.pid`: the process that has the session open, so `sessions list` can tell a
//!   running session from one left behind by a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use safe_coder_history::{sync, SessionRepo};
use safe_coder_protocol::ChangeSet;
use safe_coder_sandbox::{BackendKind, Sandbox};
use safe_coder_store::{NewSession, SessionRecord, SessionState, Store};

pub use safe_coder_history::sync::SyncReport;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Sandbox(#[from] safe_coder_sandbox::SandboxError),
    #[error(transparent)]
    History(#[from] safe_coder_history::HistoryError),
    #[error(transparent)]
    Store(#[from] safe_coder_store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// What a new session needs to know.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub project: PathBuf,
    pub data_dir: PathBuf,
    /// `None` = auto.
    pub backend: Option<BackendKind>,
    pub exclude: Vec<String>,
    pub memory_mb: u64,
    pub cpus: f64,
    pub provider: String,
    pub model: String,
    pub approval_mode: String,
}

/// The user's verdict on a change set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Review {
    AcceptAll,
    RejectAll,
    /// Sync these paths; the others are rejected (reverted in the session).
    Pick(Vec<String>),
    /// Sync nothing now; the session waits for `sessions sync`.
    Keep,
}

pub struct Session {
    pub id: String,
    pub project: PathBuf,
    pub backend: BackendKind,
    /// Why this backend (for `auto`).
    pub note: String,
    pub dir: PathBuf,
    pub sandbox: Arc<dyn Sandbox>,
    pub repo: Arc<SessionRepo>,
    pub store: Arc<Mutex<Store>>,
}

fn new_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Sortable by time, unique enough with the random tail.
    format!("{:x}{:04x}", (t / 1_000_000) as u64, fastrand::u16(..))
}

pub fn sessions_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sessions")
}

pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("sessions.db")
}

fn open_sandbox(
    backend: BackendKind,
    work: &Path,
    memory_mb: u64,
    cpus: f64,
) -> Result<Arc<dyn Sandbox>, SessionError> {
    let mut spec = safe_coder_sandbox::SandboxSpec::new(work);
    spec.limits.memory_mb = memory_mb;
    spec.limits.cpus = cpus;
    Ok(safe_coder_sandbox::open(backend, spec)?)
}

impl Session {
    /// Creates the session directory, copies the project in (or sets up the shadow
    /// repository for `direct`), records the session and opens its sandbox.
    pub fn start(
        config: &SessionConfig,
        store: Arc<Mutex<Store>>,
    ) -> Result<Session, SessionError> {
        let project = config.project.canonicalize().map_err(|e| {
            SessionError::Other(format!(
                "cannot open the project {}: {e}",
                config.project.display()
            ))
        })?;
        if !project.is_dir() {
            return Err(SessionError::Other(format!(
                "{} is not a directory",
                project.display()
            )));
        }
        // Every backend but `direct` works on a copy, whichever `auto` picks: probing the
        // backend (which runs bubblewrap once) overlaps with the copy-in.
        let requested = config.backend;
        let probe = (requested != Some(BackendKind::Direct))
            .then(|| std::thread::spawn(move || safe_coder_sandbox::select::choose(requested)));
        let direct_choice = match probe {
            None => Some(safe_coder_sandbox::select::choose(requested)?),
            Some(_) => None,
        };
        let id = new_id();
        let dir = sessions_dir(&config.data_dir).join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| {
            SessionError::Other(format!(
                "cannot create the session directory {}: {e}",
                dir.display()
            ))
        })?;

        // A data dir inside the project (project = $HOME) must not be copied into itself.
        let mut exclude = config.exclude.clone();
        if let Ok(data) = config.data_dir.canonicalize() {
            if let Ok(rel) = data.strip_prefix(&project) {
                if !rel.as_os_str().is_empty() {
                    exclude.push(format!("{}/**", rel.display()));
                    exclude.push(rel.display().to_string());
                }
            }
        }
        let (backend, note, repo, work) = if let Some((backend, note)) = direct_choice {
            let repo = SessionRepo::create_shadow(&project, &dir.join("shadow.git"), &exclude)?;
            (backend, note, repo, project.clone())
        } else {
            let work = dir.join("work");
            // The history lives beside the work tree, not in it: the agent's commands run
            // in the work tree and must not be able to rewrite it.
            let made = SessionRepo::create_sandbox_copy_at(
                &project,
                &work,
                Some(&dir.join("history.git")),
                &exclude,
            );
            let chosen = match probe.map(|p| p.join()) {
                Some(Ok(result)) => result.map_err(SessionError::from),
                _ => Err(SessionError::Other("the backend probe failed".into())),
            };
            match (made, chosen) {
                (Ok(repo), Ok((backend, note))) => (backend, note, repo, work),
                (made, chosen) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    chosen?;
                    made?;
                    return Err(SessionError::Other(
                        "the session could not be created".into(),
                    ));
                }
            }
        };
        let base = repo.base()?;
        {
            let s = store
                .lock()
                .map_err(|_| SessionError::Other("the session store is poisoned".into()))?;
            s.create_session(&NewSession {
                id: id.clone(),
                project: project.display().to_string(),
                backend: backend.as_str().to_string(),
                session_dir: dir.display().to_string(),
                base_commit: Some(base),
                provider: config.provider.clone(),
                model: config.model.clone(),
                approval_mode: config.approval_mode.clone(),
            })?;
        }
        let sandbox = open_sandbox(backend, &work, config.memory_mb, config.cpus)?;
        let session = Session {
            id,
            project,
            backend,
            note,
            dir,
            sandbox,
            repo: Arc::new(repo),
            store,
        };
        session.claim();
        Ok(session)
    }

    /// Reopens a recorded session (resume, `sessions sync`).
    pub fn open(
        record: &SessionRecord,
        store: Arc<Mutex<Store>>,
        memory_mb: u64,
        cpus: f64,
    ) -> Result<Session, SessionError> {
        let backend = BackendKind::parse(&record.backend).ok_or_else(|| {
            SessionError::Other(format!(
                "session {} has an unknown backend '{}'",
                record.id, record.backend
            ))
        })?;
        let dir = PathBuf::from(&record.session_dir);
        let project = PathBuf::from(&record.project);
        let (repo, work) = if backend == BackendKind::Direct {
            (
                SessionRepo::open(&project, &dir.join("shadow.git"))?,
                project.clone(),
            )
        } else {
            let work = dir.join("work");
            {
                let history = dir.join("history.git");
                let git_dir = if history.is_dir() {
                    history
                } else {
                    work.join(".git")
                };
                (SessionRepo::open(&work, &git_dir)?, work)
            }
        };
        let sandbox = open_sandbox(backend, &work, memory_mb, cpus)?;
        let session = Session {
            id: record.id.clone(),
            project,
            backend,
            note: String::new(),
            dir,
            sandbox,
            repo: Arc::new(repo),
            store,
        };
        Ok(session)
    }

    /// Marks the session as opened by this process.
    pub fn claim(&self) {
        let _ = std::fs::write(self.dir.join("owner.pid"), std::process::id().to_string());
        self.set_state(SessionState::Active);
    }

    fn set_state(&self, state: SessionState) {
        if let Ok(s) = self.store.lock() {
            let _ = s.set_state(&self.id, state);
        }
    }

    /// The agent's changes against the session's base, with host conflicts marked.
    pub fn change_set(&self) -> Result<ChangeSet, SessionError> {
        let mut changes = self.repo.change_set()?;
        if self.backend.uses_copy() {
            // Files already synced (by a `/sync` earlier in the session) are not offered
            // again: only what the host still lacks.
            let pending = sync::pending(&self.repo, &self.project)?;
            changes.files.retain(|f| pending.contains(&f.path));
            sync::mark_conflicts(&self.repo, &self.project, &mut changes)?;
        }
        Ok(changes)
    }

    pub fn diff(&self, path: Option<&str>) -> Result<String, SessionError> {
        Ok(self.repo.diff(path)?)
    }

    /// Applies the user's verdict. Returns the sync report (empty for `Keep` and
    /// `RejectAll`) and whether the session is finished (nothing unsynced remains).
    /// With `ending == false` (`/sync` mid-session) the session always goes on: rejected
    /// files are reverted in the sandbox, and nothing is removed.
    pub fn review(&self, review: Review, ending: bool) -> Result<(SyncReport, bool), SessionError> {
        let empty = SyncReport::default();
        if self.backend == BackendKind::Direct {
            // The changes are already in the project; the shadow history stays for /undo.
            self.set_state(SessionState::Synced);
            return Ok((empty, true));
        }
        if !ending {
            return self.review_mid_session(review);
        }
        match review {
            Review::Keep => {
                self.set_state(SessionState::Ended);
                Ok((empty, false))
            }
            Review::RejectAll => {
                self.set_state(SessionState::Discarded);
                self.remove_dir();
                Ok((empty, true))
            }
            Review::AcceptAll => {
                self.finish_sync(sync::sync_back(&self.repo, &self.project, None)?)
            }
            Review::Pick(paths) => {
                let report = sync::sync_back(&self.repo, &self.project, Some(&paths))?;
                // Rejected files go back to the base in the session, so they are not
                // offered again; the history keeps the agent's version.
                self.reject_others(&paths, &report)?;
                self.finish_sync(report)
            }
        }
    }

    fn review_mid_session(&self, review: Review) -> Result<(SyncReport, bool), SessionError> {
        let empty = SyncReport::default();
        let report = match review {
            Review::Keep => empty,
            Review::AcceptAll => sync::sync_back(&self.repo, &self.project, None)?,
            Review::RejectAll => {
                self.reject_others(&[], &empty)?;
                empty
            }
            Review::Pick(paths) => {
                let report = sync::sync_back(&self.repo, &self.project, Some(&paths))?;
                self.reject_others(&paths, &report)?;
                report
            }
        };
        Ok((report, false))
    }

    /// Reverts, in the sandbox, every changed file that was neither accepted nor held
    /// back by a conflict.
    fn reject_others(&self, accepted: &[String], report: &SyncReport) -> Result<(), SessionError> {
        // Only what is still unsynced: a file synced earlier is not the user's to reject now.
        let pending = sync::pending(&self.repo, &self.project)?;
        let mut rejected = false;
        for f in self
            .repo
            .change_set()?
            .files
            .into_iter()
            .filter(|f| pending.contains(&f.path))
        {
            if !accepted.contains(&f.path) && !report.conflicts.contains(&f.path) {
                self.repo.restore(Some(&f.path))?;
                rejected = true;
            }
        }
        if rejected {
            let _ = self
                .repo
                .commit_changes("Rejected by the user at review", None);
        }
        Ok(())
    }

    fn finish_sync(&self, report: SyncReport) -> Result<(SyncReport, bool), SessionError> {
        if report.conflicts.is_empty() {
            self.set_state(SessionState::Synced);
            self.remove_dir();
            Ok((report, true))
        } else {
            self.set_state(SessionState::Ended);
            Ok((report, false))
        }
    }

    /// Drops the session's work (`sessions discard`).
    pub fn discard(&self) {
        self.set_state(SessionState::Discarded);
        if self.backend != BackendKind::Direct {
            self.remove_dir();
        }
    }

    fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the process that opened a session is still alive.
pub fn owner_alive(session_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(session_dir.join("owner.pid")) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return false;
    };
    if pid as u32 == std::process::id() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}
