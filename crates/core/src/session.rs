//! A session's life (docs/sessions.md): the session directory under the data dir, the sandbox,
//! the git history, the store record, review and sync back, and recovery after a crash.
//!
//! Layout of `<data_dir>/sessions/<id>/`:
//! - `work/`: the agent's tree (every backend but `direct`), with its history in
//!   `history.git/` beside it, out of the agent's reach: an overlay mount point (the
//!   project read-only below, the session's writes in `upper/`, overlayfs's scratch in
//!   `ovl-work/`) or a copy of the project;
//! - `shadow.git/`: the shadow repository whose work tree is the project (`direct`);
//! - `owner.pid`: the process that has the session open, so `sessions list` can tell a
//!   running session from one left behind by a crash.
//!
//! `<data_dir>/statcache/` is shared by sessions: per project without git, the stat data
//! and blob ids its last first snapshot hashed, so the next one re-hashes only what
//! changed (docs/history.md, "The stat cache").
//!
//! [`SessionFiles`] is a session's history and workspace without a sandbox: enough for
//! `sessions show`, `diff`, `sync` and `discard`. A [`Session`] adds the sandbox the
//! agent's tools run in.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use safe_coder_history::SessionRepo;
use safe_coder_protocol::{ChangeSet, ReviewDecision};
use safe_coder_sandbox::{BackendKind, Sandbox};
use safe_coder_store::{NewSession, SessionRecord, SessionState, Store};

pub use crate::workspace::{ReviewResult, SyncReport, Workspace};

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
    pub limits: SessionLimits,
    pub provider: safe_coder_llm::ProviderKind,
    pub model: String,
    pub approval_mode: safe_coder_protocol::ApprovalMode,
}

/// What a session's sandbox and history are opened with.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionLimits {
    pub memory_mb: u64,
    pub cpus: f64,
    /// Environment variables handed to the agent's commands beyond the allow-list.
    pub env_passthrough: Vec<String>,
    /// The largest file a commit or a sync handles, in bytes.
    pub max_file_bytes: u64,
    /// `[docker]` settings (the session adds its id and directory).
    pub docker: safe_coder_sandbox::DockerSpec,
    /// The microVM backends' image, size and binaries (`[vm]`).
    pub vm: safe_coder_sandbox::VmSpec,
}

impl Default for SessionLimits {
    fn default() -> Self {
        let l = safe_coder_sandbox::Limits::default();
        SessionLimits {
            memory_mb: l.memory_mb,
            cpus: l.cpus,
            env_passthrough: Vec::new(),
            max_file_bytes: safe_coder_history::DEFAULT_MAX_FILE_BYTES,
            docker: safe_coder_sandbox::DockerSpec::default(),
            vm: safe_coder_sandbox::VmSpec::default(),
        }
    }
}

/// A session's files: its history, its workspace and its record. No sandbox runs.
pub struct SessionFiles {
    pub id: String,
    pub project: PathBuf,
    pub backend: BackendKind,
    pub dir: PathBuf,
    pub workspace: Workspace,
    pub repo: Arc<SessionRepo>,
    pub store: Arc<Mutex<Store>>,
}

/// A session with its sandbox open.
pub struct Session {
    files: SessionFiles,
    pub sandbox: Arc<dyn Sandbox>,
    /// Why this backend (for `auto`).
    pub note: String,
}

impl Deref for Session {
    type Target = SessionFiles;
    fn deref(&self) -> &SessionFiles {
        &self.files
    }
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
    repo: &SessionRepo,
    limits: &SessionLimits,
    (id, dir): (&str, &Path),
) -> Result<Arc<dyn Sandbox>, SessionError> {
    let mut spec = safe_coder_sandbox::SandboxSpec::new(work);
    spec.overlay = repo.overlay();
    spec.limits.memory_mb = limits.memory_mb;
    spec.limits.cpus = limits.cpus;
    spec.env_passthrough = limits.env_passthrough.clone();
    spec.vm = limits.vm.clone();
    // A container is named and labelled after its session, and kept while its
    // directory is.
    spec.docker = limits.docker.clone();
    spec.docker.session_id = Some(id.to_string());
    spec.docker.session_dir = Some(dir.to_path_buf());
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
        // Probing the backend (which runs bubblewrap once) overlaps with the copy-in,
        // whichever backend `auto` picks; `direct` needs no probe to know its workspace.
        let requested = config.backend;
        let settings = safe_coder_sandbox::BackendSettings {
            vm: config.limits.vm.clone(),
            docker: config.limits.docker.clone(),
        };
        let probe = std::thread::spawn(move || {
            safe_coder_sandbox::select::choose_with(requested, &settings)
        });
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
        // `auto` never picks `direct`, so the workspace is known before the probe ends.
        let planned = requested.unwrap_or(BackendKind::Process);
        // `qemu` runs over the overlay too when its workspace is shared (virtio-fs), and
        // `docker` when its engine can mount it as a volume.
        let vm_share = |kind| match kind {
            BackendKind::Docker => safe_coder_sandbox::docker::share::decide(&config.limits.docker),
            _ => safe_coder_sandbox::vm::share::decide(kind, &config.limits.vm, Some(&project)),
        };
        let planned_share = vm_share(planned);
        let mut workspace =
            Workspace::for_new_session(planned, &project, &dir, planned_share.shared);
        let stat_cache = config.data_dir.join("statcache");
        let made = workspace.create_history(&dir, &exclude, Some(&stat_cache));
        let chosen = match probe.join() {
            Ok(result) => result.map_err(SessionError::from),
            Err(_) => Err(SessionError::Other("the backend probe failed".into())),
        };
        let ((mut repo, mut how), (backend, note)) = match (made, chosen) {
            (Ok(made), Ok(chosen)) => (made, chosen),
            (made, chosen) => {
                safe_coder_sandbox::overlay::remove_tree(&dir);
                chosen?;
                made?;
                return Err(SessionError::Other(
                    "the session could not be created".into(),
                ));
            }
        };
        // `auto` chose a backend that does not run over an overlay (a container, a VM):
        // it gets a copy instead.
        let share = if backend == planned {
            planned_share
        } else {
            vm_share(backend)
        };
        let overlay_ok =
            matches!(backend, BackendKind::Copy | BackendKind::Process) || share.shared;
        if repo.overlay().is_some() && !overlay_ok {
            drop(repo);
            for sub in ["upper", "ovl-work", "work", "history.git"] {
                safe_coder_sandbox::overlay::remove_tree(&dir.join(sub));
            }
            workspace = Workspace::for_backend(backend, &project, &dir);
            let remade = workspace.create_history(&dir, &exclude, Some(&stat_cache));
            (repo, how) = match remade {
                Ok(made) => made,
                Err(e) => {
                    safe_coder_sandbox::overlay::remove_tree(&dir);
                    return Err(e);
                }
            };
        }
        if matches!(backend, BackendKind::Qemu | BackendKind::Docker) {
            // Shared only when the overlay could be mounted; else the copy goes in.
            let why = if share.shared && repo.overlay().is_none() {
                "copied in (no overlay to share)"
            } else {
                share.why.as_str()
            };
            how = format!("{how}, {why}");
        }
        let note = with_workspace(&note, &how);
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
                provider: config.provider.as_str().to_string(),
                model: config.model.clone(),
                approval_mode: config.approval_mode.as_str().to_string(),
            })?;
        }
        let sandbox = open_sandbox(
            backend,
            workspace.work_tree(),
            &repo,
            &config.limits,
            (&id, &dir),
        )?;
        let note = match sandbox.backend_detail() {
            Some(detail) => format!("{note}; {detail}"),
            None => note,
        };
        let session = Session {
            files: SessionFiles {
                id,
                project,
                backend,
                dir,
                workspace,
                repo: Arc::new(repo.with_max_file_bytes(config.limits.max_file_bytes)),
                store,
            },
            sandbox,
            note,
        };
        session.claim();
        Ok(session)
    }

    /// Reopens a recorded session with its sandbox (resume).
    pub fn open(
        record: &SessionRecord,
        store: Arc<Mutex<Store>>,
        limits: &SessionLimits,
    ) -> Result<Session, SessionError> {
        let files = SessionFiles::open_with(record, store, limits.max_file_bytes)?;
        let sandbox = open_sandbox(
            files.backend,
            files.workspace.work_tree(),
            &files.repo,
            limits,
            (&files.id, &files.dir),
        )?;
        Ok(Session {
            files,
            sandbox,
            note: String::new(),
        })
    }
}

impl SessionFiles {
    /// Opens a recorded session's history and workspace, without a sandbox.
    pub fn open(
        record: &SessionRecord,
        store: Arc<Mutex<Store>>,
    ) -> Result<SessionFiles, SessionError> {
        Self::open_with(record, store, safe_coder_history::DEFAULT_MAX_FILE_BYTES)
    }

    /// [`SessionFiles::open`] with the per-file size limit of `[isolation] max_file_mb`.
    pub fn open_with(
        record: &SessionRecord,
        store: Arc<Mutex<Store>>,
        max_file_bytes: u64,
    ) -> Result<SessionFiles, SessionError> {
        let backend = BackendKind::parse(&record.backend).ok_or_else(|| {
            SessionError::Other(format!(
                "session {} has an unknown backend '{}'",
                record.id, record.backend
            ))
        })?;
        let dir = PathBuf::from(&record.session_dir);
        let project = PathBuf::from(&record.project);
        let workspace = Workspace::for_backend(backend, &project, &dir);
        let repo = workspace
            .open_history(&dir)?
            .with_max_file_bytes(max_file_bytes);
        Ok(SessionFiles {
            id: record.id.clone(),
            project,
            backend,
            dir,
            workspace,
            repo: Arc::new(repo),
            store,
        })
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

    /// The agent's changes the project still lacks, with host conflicts marked.
    pub fn change_set(&self) -> Result<ChangeSet, SessionError> {
        self.workspace.pending_changes(&self.repo)
    }

    pub fn diff(&self, path: Option<&str>) -> Result<String, SessionError> {
        Ok(self.repo.diff(path)?)
    }

    /// Applies the user's verdict and records the session's state. With `ending` the
    /// session dir is removed when nothing unsynced remains; without it (`/sync`
    /// mid-session) the session always goes on.
    pub fn review(
        &self,
        decision: &ReviewDecision,
        ending: bool,
    ) -> Result<ReviewResult, SessionError> {
        let result = self.workspace.apply_review(&self.repo, decision, ending)?;
        if ending {
            if !self.workspace.syncs_back() {
                self.set_state(SessionState::Synced);
            } else if result.finished {
                let rejected = matches!(decision, ReviewDecision::RejectAll);
                self.set_state(if rejected {
                    SessionState::Discarded
                } else {
                    SessionState::Synced
                });
                self.remove_dir();
            } else {
                self.set_state(SessionState::Ended);
            }
        }
        Ok(result)
    }

    /// `sessions sync --theirs/--ours`: see [`Workspace::resolve`]. Call
    /// [`SessionFiles::change_set`] first: a file is written only as the user last saw it.
    pub fn resolve(&self, theirs: &[String], ours: &[String]) -> Result<SyncReport, SessionError> {
        self.workspace.resolve(&self.repo, theirs, ours)
    }

    /// `sessions sync --merge`: see [`Workspace::merge`].
    pub fn merge(
        &self,
        path: &str,
    ) -> Result<safe_coder_history::sync::MergeOutcome, SessionError> {
        self.workspace.merge(&self.repo, path)
    }

    /// Drops the session's work (`sessions discard`).
    pub fn discard(&self) {
        self.set_state(SessionState::Discarded);
        if self.workspace.syncs_back() {
            self.remove_dir();
        }
    }

    fn remove_dir(&self) {
        // overlayfs leaves its `work/work` without permissions: remove_tree copes.
        safe_coder_sandbox::overlay::remove_tree(&self.dir);
    }
}

/// The backend note with how the session's tree was made put into its first clause
/// (the one the start line shows): "auto chose process: …, overlay workspace; …".
fn with_workspace(note: &str, how: &str) -> String {
    let (how_short, how_rest) = match how.split_once("; ") {
        Some((a, b)) => (a, Some(b)),
        None => (how, None),
    };
    let mut out = match note.split_once("; ") {
        Some((first, rest)) => format!("{first}, {how_short}; {rest}"),
        None if note.trim().is_empty() => how_short.to_string(),
        None => format!("{}, {how_short}", note.trim()),
    };
    if let Some(r) = how_rest {
        out.push_str("; ");
        out.push_str(r);
    }
    out
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
