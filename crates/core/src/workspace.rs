//! Where the agent's files live, relative to the user's project: a sandbox copy that is
//! synced back after review, or the project itself (`direct`). This is the one place
//! that knows the difference; the rest of the core asks the workspace what to do.

use std::path::{Path, PathBuf};

use safe_coder_history::{sync, SessionRepo};
use safe_coder_protocol::{ChangeSet, ReviewDecision};
use safe_coder_sandbox::overlay::Layers;
use safe_coder_sandbox::BackendKind;

/// The upper layer of an overlay workspace, in the session dir.
const UPPER: &str = "upper";

pub use safe_coder_history::sync::SyncReport;

use crate::session::SessionError;

/// The files a session works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workspace {
    /// The project as the agent's own tree in the session dir (`work/`, history in
    /// `history.git` beside it); the project changes only through an accepted sync.
    /// With `layers`, `work/` is an overlay (the project read-only below, the session's
    /// writes in `upper/`); without, it is a copy.
    SandboxCopy {
        project: PathBuf,
        work: PathBuf,
        layers: Option<Layers>,
    },
    /// The project itself; the history is a shadow repository in the session dir
    /// (`shadow.git`), and the user's own `.git` is never touched.
    InPlace { project: PathBuf },
}

/// What applying a review verdict did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReviewResult {
    pub report: SyncReport,
    /// Nothing unsynced remains: the session can be closed.
    pub finished: bool,
    /// Flagged files (they steer the next session, or are symlinks) that "accept all"
    /// did not sync: they need to be picked by name (a second confirmation).
    pub held_back: Vec<String>,
}

fn empty_report() -> SyncReport {
    SyncReport::default()
}

impl Workspace {
    /// The workspace of a recorded session stored in `session_dir`: an overlay when
    /// its upper layer is there.
    pub fn for_backend(backend: BackendKind, project: &Path, session_dir: &Path) -> Workspace {
        let layered = session_dir.join(UPPER).is_dir();
        Self::with_layers(backend, project, session_dir, layered)
    }

    /// The workspace a new session on `backend` asks for: an overlay for `copy` and
    /// `process` (the backends that run over one), and for `qemu` and `docker` when
    /// `shared` (`safe_coder_sandbox::vm::share`, `safe_coder_sandbox::docker::share`), unless
    /// `SAFE_CODER_WORKSPACE=copy`; [`Workspace::create_history`] falls back to a copy
    /// where it cannot be mounted.
    pub fn for_new_session(
        backend: BackendKind,
        project: &Path,
        session_dir: &Path,
        shared: bool,
    ) -> Workspace {
        let layered = (matches!(backend, BackendKind::Copy | BackendKind::Process)
            || (matches!(backend, BackendKind::Qemu | BackendKind::Docker) && shared))
            && !safe_coder_sandbox::overlay::forced_copy();
        Self::with_layers(backend, project, session_dir, layered)
    }

    fn with_layers(
        backend: BackendKind,
        project: &Path,
        session_dir: &Path,
        layered: bool,
    ) -> Workspace {
        if backend.uses_copy() {
            let work = session_dir.join("work");
            Workspace::SandboxCopy {
                project: project.to_path_buf(),
                layers: layered.then(|| Layers {
                    lower: project.to_path_buf(),
                    upper: session_dir.join(UPPER),
                    work: session_dir.join("ovl-work"),
                    merged: work.clone(),
                }),
                work,
            }
        } else {
            Workspace::InPlace {
                project: project.to_path_buf(),
            }
        }
    }

    pub fn project(&self) -> &Path {
        match self {
            Workspace::SandboxCopy { project, .. } | Workspace::InPlace { project } => project,
        }
    }

    /// The directory the agent's tools act on.
    pub fn work_tree(&self) -> &Path {
        match self {
            Workspace::SandboxCopy { work, .. } => work,
            Workspace::InPlace { project } => project,
        }
    }

    /// Whether the agent's changes reach the project only through a review and sync.
    pub fn syncs_back(&self) -> bool {
        matches!(self, Workspace::SandboxCopy { .. })
    }

    /// The session history's git dir inside `session_dir`.
    pub fn git_dir(&self, session_dir: &Path) -> PathBuf {
        match self {
            Workspace::SandboxCopy { work, .. } => {
                // Sessions made before the history moved out of the work tree keep
                // their `.git` inside it.
                let beside = session_dir.join("history.git");
                if beside.is_dir() || !work.join(".git").is_dir() {
                    beside
                } else {
                    work.join(".git")
                }
            }
            Workspace::InPlace { .. } => session_dir.join("shadow.git"),
        }
    }

    /// Creates the session history (and the sandbox's tree: the overlay, or a copy) for
    /// a new session. An overlay that cannot be mounted here becomes a copy (`self` says
    /// so afterwards). Also returns how the tree was made, for the session's start line.
    /// `stat_cache` (a directory in the data dir) lets a project without git skip
    /// re-hashing the files its previous session saw unchanged.
    pub fn create_history(
        &mut self,
        session_dir: &Path,
        exclude: &[String],
        stat_cache: Option<&Path>,
    ) -> Result<(SessionRepo, String), SessionError> {
        let git_dir = session_dir.join("history.git");
        match self {
            Workspace::SandboxCopy {
                project,
                work,
                layers,
            } => {
                let mut why_not = String::new();
                if let Some(l) = layers.as_ref() {
                    match SessionRepo::create_overlay_cached(l, &git_dir, exclude, stat_cache) {
                        Ok(repo) => return Ok((repo, "overlay workspace".to_string())),
                        Err(e) => {
                            why_not = format!("; no overlay: {e}");
                            *layers = None;
                        }
                    }
                }
                let repo = SessionRepo::create_sandbox_copy_cached(
                    project,
                    work,
                    Some(&git_dir),
                    exclude,
                    true,
                    stat_cache,
                )?;
                let how = match repo.start_stats() {
                    Some(s) if s.reflinked => "copy workspace (reflinks)",
                    _ => "copy workspace",
                };
                Ok((repo, format!("{how}{why_not}")))
            }
            Workspace::InPlace { project } => Ok((
                SessionRepo::create_shadow_cached(
                    project,
                    &session_dir.join("shadow.git"),
                    exclude,
                    true,
                    stat_cache,
                )?,
                "in place".to_string(),
            )),
        }
    }

    /// Opens a recorded session's history (remounting an overlay workspace).
    pub fn open_history(&self, session_dir: &Path) -> Result<SessionRepo, SessionError> {
        Ok(match self {
            Workspace::SandboxCopy {
                layers: Some(l), ..
            } => SessionRepo::open_overlay(l, &self.git_dir(session_dir))?,
            _ => SessionRepo::open(self.work_tree(), &self.git_dir(session_dir))?,
        })
    }

    /// What the review offers: the agent's changes the project still lacks, with the
    /// files changed on the host since the session began marked as conflicts. In place,
    /// the changes are already in the project and are shown for information only.
    pub fn pending_changes(&self, repo: &SessionRepo) -> Result<ChangeSet, SessionError> {
        let mut changes = repo.change_set()?;
        if let Workspace::SandboxCopy { project, .. } = self {
            // Files already synced (by a `/sync` earlier in the session) are not offered
            // again: only what the host still lacks.
            let pending = sync::pending(repo, project)?;
            changes.files.retain(|f| pending.contains(&f.path));
            sync::mark_conflicts(repo, project, &mut changes)?;
        }
        Ok(changes)
    }

    /// Applies a verdict. With `ending == false` (`/sync` mid-session) the session
    /// always goes on: rejected files are reverted in the sandbox.
    pub fn apply_review(
        &self,
        repo: &SessionRepo,
        decision: &ReviewDecision,
        ending: bool,
    ) -> Result<ReviewResult, SessionError> {
        let Workspace::SandboxCopy { project, .. } = self else {
            // The changes are already in the project; the shadow history stays for /undo.
            return Ok(ReviewResult {
                report: empty_report(),
                finished: true,
                held_back: Vec::new(),
            });
        };
        // "Accept all" never syncs a file that steers the next session or a symlink:
        // those wait in the session until the user picks them by name.
        if matches!(decision, ReviewDecision::AcceptAll) {
            let changes = self.pending_changes(repo)?;
            let (flagged, rest): (Vec<_>, Vec<_>) =
                changes.files.iter().partition(|f| f.needs_second_look());
            if !flagged.is_empty() {
                let paths = rest.iter().map(|f| f.path.clone()).collect();
                let mut result = self.apply_review(
                    repo,
                    &ReviewDecision::Pick {
                        paths,
                        keep_rest: true,
                    },
                    ending,
                )?;
                result.held_back = flagged.iter().map(|f| f.path.clone()).collect();
                return Ok(result);
            }
        }
        let report = match decision {
            ReviewDecision::Keep => {
                return Ok(ReviewResult {
                    report: empty_report(),
                    finished: false,
                    held_back: Vec::new(),
                })
            }
            ReviewDecision::RejectAll if ending => {
                return Ok(ReviewResult {
                    report: empty_report(),
                    finished: true,
                    held_back: Vec::new(),
                })
            }
            ReviewDecision::RejectAll => {
                reject_others(repo, project, &[], &empty_report())?;
                empty_report()
            }
            ReviewDecision::AcceptAll => sync::sync_back(repo, project, None)?,
            ReviewDecision::Pick { paths, keep_rest } => {
                let report = sync::sync_back(repo, project, Some(paths))?;
                if *keep_rest {
                    let finished = ending && sync::pending(repo, project)?.is_empty();
                    return Ok(ReviewResult {
                        report,
                        finished,
                        held_back: Vec::new(),
                    });
                }
                // Rejected files go back to the base in the session, so they are not
                // offered again; the history keeps the agent's version.
                reject_others(repo, project, paths, &report)?;
                report
            }
        };
        let finished = ending && report.conflicts.is_empty();
        Ok(ReviewResult {
            report,
            finished,
            held_back: Vec::new(),
        })
    }
}

impl Workspace {
    /// Settles files by the user's word, conflicts above all: for each path of `theirs`
    /// the agent's version is written over the host's, even if the host file changed
    /// since the session began (through the same checked writer as every sync); for
    /// each path of `ours` the host's version stays and the agent's change is dropped
    /// from the session (reverted to the session start and committed), so it is no longer
    /// pending. The report lists `theirs` that were written under `applied`.
    pub fn resolve(
        &self,
        repo: &SessionRepo,
        theirs: &[String],
        ours: &[String],
    ) -> Result<SyncReport, SessionError> {
        let Workspace::SandboxCopy { project, .. } = self else {
            return Err(SessionError::Other(
                "a direct session changed the project in place: there is nothing to take or keep"
                    .into(),
            ));
        };
        let mut report = if theirs.is_empty() {
            empty_report()
        } else {
            sync::sync_back_with(repo, project, Some(theirs), theirs)?
        };
        // Paths not named were merely "not accepted": they are not news to the user.
        report.skipped.retain(|p| theirs.contains(p));
        for p in ours {
            // Commits "Restore P to the session start"; the history keeps the agent's
            // version in the commit before.
            repo.restore(Some(p))?;
        }
        Ok(report)
    }
}

impl Workspace {
    /// `sessions sync --merge`: a three-way merge of the host's and the agent's version
    /// of a conflicting file, kept in the session only when clean (see
    /// [`sync::merge_into_session`]); the project is not touched.
    pub fn merge(
        &self,
        repo: &SessionRepo,
        path: &str,
    ) -> Result<sync::MergeOutcome, SessionError> {
        let Workspace::SandboxCopy { project, .. } = self else {
            return Err(SessionError::Other(
                "a direct session changed the project in place: there is nothing to merge".into(),
            ));
        };
        Ok(sync::merge_into_session(repo, project, path)?)
    }
}

/// Reverts, in the sandbox, every pending change that was neither accepted nor held
/// back by a conflict.
fn reject_others(
    repo: &SessionRepo,
    project: &Path,
    accepted: &[String],
    report: &SyncReport,
) -> Result<(), SessionError> {
    // Only what is still unsynced: a file synced earlier is not the user's to reject now.
    let pending = sync::pending(repo, project)?;
    let mut rejected = false;
    for f in repo
        .change_set()?
        .files
        .into_iter()
        .filter(|f| pending.contains(&f.path))
    {
        if !accepted.contains(&f.path) && !report.conflicts.contains(&f.path) {
            repo.restore(Some(&f.path))?;
            rejected = true;
        }
    }
    if rejected {
        repo.commit_changes("Rejected by the user at review", None)?;
    }
    Ok(())
}
