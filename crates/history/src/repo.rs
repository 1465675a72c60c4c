use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use safe_coder_sandbox::overlay::{Layers, OverlayMount};

use safe_coder_protocol::{ChangeKind, ChangeSet, FileChange, LeftOutPath};

use crate::beneath::{open_beneath, Opened};
use crate::borrow::Borrowed;
use crate::error::{HistoryError, IoContext};
use crate::git::{ensure_git, Git};
use crate::objects::{self, is_hex_id, CommitFields, Oid};
use crate::paths::{clean_rel, rel_to_root};
use crate::snapshot::{self, write_ref, PendingIndex, SnapshotStats};
use crate::stage;
use crate::upper;
use crate::{INITIAL_MESSAGE, SHADOW_MESSAGE};

/// Trailer on undo commits: the commit whose state the undo restored, so that a
/// second undo steps further back instead of redoing.
const UNDO_TRAILER: &str = "Safe-Coder-Undo-State: ";
const BASE_REF: &str = "refs/safe-coder/base";
/// The tree the last change set described (what the user reviewed): sync refuses a
/// file whose content differs from it.
pub(crate) const REVIEWED_REF: &str = "refs/safe-coder/reviewed";
/// Paths already reported as left out of the history (so each is reported once).
const LEFT_OUT_FILE: &str = "safe-coder-left-out";
/// Paths of the project that the initial snapshot could not take.
pub(crate) const LEFT_OUT_AT_START_FILE: &str = "safe-coder-left-out-at-start";
/// Marks the shadow repository of the `direct` backend.
const SHADOW_MARK: &str = "safe-coder-shadow";

/// The default per-file size limit of commits: larger files are left out (reported),
/// never read into memory. See [`SessionRepo::with_max_file_bytes`].
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 << 20;

/// What [`SessionRepo::commit_changes_reporting`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The new commit, `None` when nothing changed.
    pub commit: Option<String>,
    /// Paths left out of the history that were not reported before (each path is
    /// reported once per session): show them to the user.
    pub newly_left_out: Vec<LeftOutPath>,
}

/// One commit of the session history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: String,
    pub short_id: String,
    /// The full message, without the trailing newline.
    pub message: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
}

/// The git history of one session: a work tree (the sandbox copy, or the project itself
/// for the `direct` backend) and its git dir.
#[derive(Clone, Debug)]
pub struct SessionRepo {
    /// The work tree as git and the agent see it.
    work_tree: PathBuf,
    /// The work tree as this process reads and writes it: `work_tree`, or with an
    /// overlay workspace the mount's `/proc/self/fd/N` path (never canonicalized).
    files: PathBuf,
    /// The overlay workspace, when the work tree is one (see `upper.rs`).
    overlay: Option<Arc<OverlayMount>>,
    git_dir: PathBuf,
    max_file_bytes: u64,
    /// The `direct` backend's shadow repository: nested repositories are the user's own
    /// and stay untracked instead of being tracked as plain files.
    shadow: bool,
    /// What the first snapshot did, when this value created it.
    start: Option<SnapshotStats>,
    /// The first snapshot's index while it is still being written (`snapshot.rs`).
    pending_index: Arc<PendingIndex>,
}

/// Short id as shown in messages (`Rollback to 1a2b3c4`).
pub(crate) fn short(id: &str) -> String {
    id.chars().take(7).collect()
}

fn canonical(p: &Path) -> Result<PathBuf, HistoryError> {
    fs::canonicalize(p).ctx(|| format!("cannot resolve {}", p.display()))
}

impl SessionRepo {
    /// Copies `project` into `work_tree` (without `.git` at any depth and without the
    /// `excludes` globs; symlinks stay symlinks, permission bits and modification times
    /// are kept), initialises a repository in `work_tree/.git` and commits everything as
    /// `Initial snapshot - Safe Coder VM`, which becomes [`Self::base`].
    pub fn create_sandbox_copy(
        project: &Path,
        work_tree: &Path,
        excludes: &[String],
    ) -> Result<SessionRepo, HistoryError> {
        Self::create_sandbox_copy_at(project, work_tree, None, excludes)
    }

    /// As [`SessionRepo::create_sandbox_copy`], with the git dir at `git_dir` instead of
    /// `work_tree/.git`. Sessions keep their history outside the work tree so that the
    /// agent's own commands, which run in the work tree, cannot rewrite it.
    pub fn create_sandbox_copy_at(
        project: &Path,
        work_tree: &Path,
        git_dir: Option<&Path>,
        excludes: &[String],
    ) -> Result<SessionRepo, HistoryError> {
        Self::create_sandbox_copy_with(project, work_tree, git_dir, excludes, true)
    }

    /// [`SessionRepo::create_sandbox_copy_at`]; `borrow_git == false` hashes every file
    /// even when the project is a git repository whose index already knows them (tests
    /// and benchmarks compare both; see [`SessionRepo::start_stats`]).
    pub fn create_sandbox_copy_with(
        project: &Path,
        work_tree: &Path,
        git_dir: Option<&Path>,
        excludes: &[String],
        borrow_git: bool,
    ) -> Result<SessionRepo, HistoryError> {
        Self::create_sandbox_copy_cached(project, work_tree, git_dir, excludes, borrow_git, None)
    }

    /// [`SessionRepo::create_sandbox_copy_with`]; with `stat_cache` (a directory in
    /// the data dir, e.g. `<data_dir>/statcache`), a project without git reuses the
    /// blob ids its previous session hashed for every file whose stat data did not
    /// change, and keeps them for the next one (see `docs/history.md`).
    pub fn create_sandbox_copy_cached(
        project: &Path,
        work_tree: &Path,
        git_dir: Option<&Path>,
        excludes: &[String],
        borrow_git: bool,
        stat_cache: Option<&Path>,
    ) -> Result<SessionRepo, HistoryError> {
        ensure_git()?;
        if !project.is_dir() {
            return Err(HistoryError::NoProject(project.to_path_buf()));
        }
        let project = canonical(project)?;
        if work_tree.exists()
            && fs::read_dir(work_tree)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(HistoryError::NotEmpty(work_tree.to_path_buf()));
        }
        fs::create_dir_all(work_tree).ctx(|| format!("cannot create {}", work_tree.display()))?;
        let work_tree = canonical(work_tree)?;
        // A data dir inside the project (project = $HOME) must not copy itself.
        let mut excludes = excludes.to_vec();
        if let Ok(rel) = work_tree.strip_prefix(&project) {
            if let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) {
                excludes.push(format!("/{rel}"));
            }
        }
        let external = git_dir.is_some();
        let git_dir = match git_dir {
            Some(dir) => {
                fs::create_dir_all(dir).ctx(|| format!("cannot create {}", dir.display()))?;
                canonical(dir)?
            }
            None => work_tree.join(".git"),
        };
        let worktree_config = external.then_some(work_tree.as_path());
        let made = snapshot::init_git_dir(&git_dir, &excludes, worktree_config).and_then(|_| {
            let source = snapshot::Source::Copy {
                work_tree: &work_tree,
                excludes: &excludes,
            };
            snapshot::write_snapshot(
                &project,
                source,
                &git_dir,
                INITIAL_MESSAGE,
                || borrow_git.then(|| Borrowed::discover(&project)).flatten(),
                stat_cache,
            )
        });
        let (stats, pending) = match made {
            Ok((_, stats, pending)) => (stats, pending),
            Err(e) => {
                // A half-made copy is worth nothing; the project was only read.
                let _ = fs::remove_dir_all(&work_tree);
                let _ = fs::remove_dir_all(&git_dir);
                return Err(e);
            }
        };
        Ok(SessionRepo {
            files: work_tree.clone(),
            work_tree,
            overlay: None,
            git_dir,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            shadow: false,
            start: Some(stats),
            pending_index: Arc::new(pending),
        })
    }

    /// An overlay workspace (see `safe_coder_sandbox::overlay`): `layers.lower` is the
    /// project, read and never written; the agent's work tree is the merged tree at
    /// `layers.merged`; the session's writes land in `layers.upper`. The first snapshot
    /// walks the project without copying it (borrowing what the user's git knows), and
    /// `.git` at any depth, the `excludes` and names git cannot hold are hidden from the
    /// merged tree by whiteouts, so the agent sees what a copy would hold. Fails when
    /// the overlay cannot be mounted here; the caller then makes a copy.
    pub fn create_overlay(
        layers: &Layers,
        git_dir: &Path,
        excludes: &[String],
    ) -> Result<SessionRepo, HistoryError> {
        Self::create_overlay_cached(layers, git_dir, excludes, None)
    }

    /// [`SessionRepo::create_overlay`] with a stat cache root, as in
    /// [`SessionRepo::create_sandbox_copy_cached`].
    pub fn create_overlay_cached(
        layers: &Layers,
        git_dir: &Path,
        excludes: &[String],
        stat_cache: Option<&Path>,
    ) -> Result<SessionRepo, HistoryError> {
        ensure_git()?;
        if !layers.lower.is_dir() {
            return Err(HistoryError::NoProject(layers.lower.clone()));
        }
        let mut layers = layers.clone();
        layers.lower = canonical(&layers.lower)?;
        for dir in [&layers.upper, &layers.merged] {
            if dir.exists()
                && fs::read_dir(dir)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
            {
                return Err(HistoryError::NotEmpty(dir.to_path_buf()));
            }
        }
        fs::create_dir_all(git_dir).ctx(|| format!("cannot create {}", git_dir.display()))?;
        let git_dir = canonical(git_dir)?;
        let made = (|| {
            snapshot::init_git_dir(&git_dir, excludes, Some(&layers.merged))?;
            let hidden = std::sync::Mutex::new(Vec::new());
            let source = snapshot::Source::Layered {
                excludes,
                hidden: &hidden,
            };
            let lower = layers.lower.clone();
            // The layers are mounted as soon as the walk knows what to hide, beside
            // the writing of the first snapshot.
            let mount = || -> Result<OverlayMount, HistoryError> {
                fs::create_dir_all(&layers.upper)
                    .ctx(|| format!("cannot create {}", layers.upper.display()))?;
                let hidden = std::mem::take(&mut *hidden.lock().unwrap_or_else(|p| p.into_inner()));
                for rel in hidden {
                    upper::hide(&layers.upper, &rel)?;
                }
                OverlayMount::mount(layers.clone())
                    .map_err(|e| HistoryError::Workspace(e.to_string()))
            };
            let ((_, stats, pending), mount) = snapshot::write_snapshot_beside(
                &layers.lower,
                source,
                &git_dir,
                INITIAL_MESSAGE,
                move || Borrowed::discover(&lower),
                stat_cache,
                mount,
            )?;
            Ok((stats, pending, mount?))
        })();
        let (stats, pending, mount) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_dir_all(&git_dir);
                safe_coder_sandbox::overlay::remove_tree(&layers.upper);
                safe_coder_sandbox::overlay::remove_tree(&layers.work);
                return Err(e);
            }
        };
        Ok(SessionRepo {
            work_tree: layers.merged.clone(),
            files: mount.host_root().to_path_buf(),
            overlay: Some(Arc::new(mount)),
            git_dir,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            shadow: false,
            start: Some(stats),
            pending_index: Arc::new(pending),
        })
    }

    /// Reopens an overlay workspace's session (after a restart, a crash or a reboot):
    /// mounts `layers` again, so the merged tree shows the upper layer's work.
    pub fn open_overlay(layers: &Layers, git_dir: &Path) -> Result<SessionRepo, HistoryError> {
        if !git_dir.join("HEAD").is_file() || !git_dir.join("objects").is_dir() {
            return Err(HistoryError::NotARepo(git_dir.to_path_buf()));
        }
        if !layers.lower.is_dir() {
            return Err(HistoryError::NoProject(layers.lower.clone()));
        }
        let mount = OverlayMount::mount(layers.clone())
            .map_err(|e| HistoryError::Workspace(e.to_string()))?;
        let git_dir = canonical(git_dir)?;
        snapshot::ensure_attributes(&git_dir);
        Ok(SessionRepo {
            work_tree: layers.merged.clone(),
            files: mount.host_root().to_path_buf(),
            overlay: Some(Arc::new(mount)),
            git_dir,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            shadow: false,
            start: None,
            pending_index: Arc::default(),
        })
    }

    /// A shadow repository for the `direct` backend: the work tree is the project
    /// itself, the git dir is `git_dir` (outside the project). Commits the current state
    /// as `Snapshot: Session start`. The user's `.git` is never read or written; the
    /// project's `.gitignore` files and the `excludes` globs decide which untracked files
    /// are tracked.
    pub fn create_shadow(
        project: &Path,
        git_dir: &Path,
        excludes: &[String],
    ) -> Result<SessionRepo, HistoryError> {
        Self::create_shadow_with(project, git_dir, excludes, true)
    }

    /// [`SessionRepo::create_shadow`]; `borrow_git` as in
    /// [`SessionRepo::create_sandbox_copy_with`].
    pub fn create_shadow_with(
        project: &Path,
        git_dir: &Path,
        excludes: &[String],
        borrow_git: bool,
    ) -> Result<SessionRepo, HistoryError> {
        Self::create_shadow_cached(project, git_dir, excludes, borrow_git, None)
    }

    /// [`SessionRepo::create_shadow_with`] with a stat cache root, as in
    /// [`SessionRepo::create_sandbox_copy_cached`].
    pub fn create_shadow_cached(
        project: &Path,
        git_dir: &Path,
        excludes: &[String],
        borrow_git: bool,
        stat_cache: Option<&Path>,
    ) -> Result<SessionRepo, HistoryError> {
        ensure_git()?;
        if !project.is_dir() {
            return Err(HistoryError::NoProject(project.to_path_buf()));
        }
        let project = canonical(project)?;
        fs::create_dir_all(git_dir).ctx(|| format!("cannot create {}", git_dir.display()))?;
        let git_dir = canonical(git_dir)?;
        let mut excludes = excludes.to_vec();
        if let Ok(rel) = git_dir.strip_prefix(&project) {
            if let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) {
                excludes.push(format!("/{rel}/"));
            }
        }
        snapshot::init_git_dir(&git_dir, &excludes, Some(&project))?;
        fs::write(git_dir.join(SHADOW_MARK), "")
            .ctx(|| format!("cannot write {}", git_dir.display()))?;
        let mut repo = SessionRepo {
            files: project.clone(),
            work_tree: project,
            overlay: None,
            git_dir,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            shadow: true,
            start: None,
            pending_index: Arc::default(),
        };
        // git decides which files count (the .gitignore files, info/exclude); the
        // snapshot itself is written directly, like a sandbox copy's. git lists on a
        // thread of its own while the files of the user's index are stat'ed.
        let git = repo.git()?;
        let list = move || git.run_buffered(&["ls-files", "--others", "--exclude-standard", "-z"]);
        // `SAFE_CODER_DIRECT_SERIAL_LISTING=1`: git lists first, then every file is
        // stat'ed (the workspace benchmark's "before" series).
        let source = if std::env::var_os("SAFE_CODER_DIRECT_SERIAL_LISTING").is_some() {
            let files = list()?;
            snapshot::Source::InPlace {
                list: Box::new(move || Ok(files)),
                speculate: false,
            }
        } else {
            snapshot::Source::InPlace {
                list: Box::new(list),
                speculate: true,
            }
        };
        let project = repo.work_tree.clone();
        let (_, stats, pending) = snapshot::write_snapshot(
            &repo.work_tree,
            source,
            &repo.git_dir,
            SHADOW_MESSAGE,
            move || borrow_git.then(|| Borrowed::discover(&project)).flatten(),
            stat_cache,
        )?;
        repo.start = Some(stats);
        repo.pending_index = Arc::new(pending);
        Ok(repo)
    }

    /// Opens an existing session repository (after a restart or a crash).
    pub fn open(work_tree: &Path, git_dir: &Path) -> Result<SessionRepo, HistoryError> {
        if !git_dir.join("HEAD").is_file() || !git_dir.join("objects").is_dir() {
            return Err(HistoryError::NotARepo(git_dir.to_path_buf()));
        }
        if !work_tree.is_dir() {
            return Err(HistoryError::NoProject(work_tree.to_path_buf()));
        }
        let git_dir = canonical(git_dir)?;
        let work_tree = canonical(work_tree)?;
        let mut repo = SessionRepo {
            files: work_tree.clone(),
            work_tree,
            overlay: None,
            git_dir,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            shadow: false,
            start: None,
            pending_index: Arc::default(),
        };
        repo.shadow = repo.git_dir.join(SHADOW_MARK).exists() || {
            // A shadow made before the mark existed: its first commit says so.
            let base = repo.base().ok();
            base.and_then(|b| repo.commit_fields(&b).ok())
                .is_some_and(|c| c.message.trim_end() == SHADOW_MESSAGE)
        };
        snapshot::ensure_attributes(&repo.git_dir);
        Ok(repo)
    }

    /// Sets the per-file size limit (`[isolation] max_file_mb`): a file larger than
    /// this is left out of commits and change sets, reported, and never read.
    pub fn with_max_file_bytes(mut self, bytes: u64) -> SessionRepo {
        self.max_file_bytes = bytes.max(1);
        self
    }

    /// What the first snapshot did (files, how many were borrowed from the user's git,
    /// reflinks), when this value created the repository; `None` after [`Self::open`].
    pub fn start_stats(&self) -> Option<SnapshotStats> {
        self.start
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    pub fn work_tree(&self) -> &Path {
        &self.work_tree
    }

    /// The session's git dir, once the first snapshot's index is written in it (a
    /// caller may run git there).
    pub fn git_dir(&self) -> &Path {
        self.pending_index.wait();
        &self.git_dir
    }

    /// Where this process reaches the work tree's files (see the field).
    pub fn files(&self) -> &Path {
        &self.files
    }

    /// The overlay workspace, when the work tree is one: a sandbox over this session
    /// must run in it (`SandboxSpec::overlay`).
    pub fn overlay(&self) -> Option<Arc<OverlayMount>> {
        self.overlay.clone()
    }

    pub(crate) fn git(&self) -> Result<Git<'_>, HistoryError> {
        // Git may read the index: the first snapshot's must be there.
        self.pending_index.wait();
        self.fresh_view()?;
        Ok(Git {
            git_dir: &self.git_dir,
            work_tree: &self.work_tree,
            files: &self.files,
            overlay: self.overlay.as_deref(),
            index: None,
        })
    }

    /// Makes the overlay's mount show what a container engine's mount of the same
    /// layers wrote (`OverlayMount::refresh`); nothing unless they are shared.
    fn fresh_view(&self) -> Result<(), HistoryError> {
        if let Some(mount) = &self.overlay {
            mount
                .refresh_if_shared()
                .map_err(|e| HistoryError::Workspace(e.to_string()))?;
        }
        Ok(())
    }

    /// Records that the work tree is about to be written from the host (a rollback,
    /// a restore, a merge): a container engine's mount of the same layers must be made
    /// afresh before the container runs again (see `OverlayMount::note_host_write`).
    pub fn note_host_write(&self) {
        if let Some(mount) = &self.overlay {
            mount.note_host_write();
        }
    }

    /// The first commit of the session.
    pub fn base(&self) -> Result<String, HistoryError> {
        if let Ok(s) = fs::read_to_string(self.git_dir.join(BASE_REF)) {
            let s = s.trim();
            if is_hex_id(s) {
                return Ok(s.to_string());
            }
        }
        let out = self.git()?.run(&["rev-list", "--max-parents=0", "HEAD"])?;
        String::from_utf8_lossy(&out)
            .lines()
            .last()
            .map(|l| l.trim().to_string())
            .filter(|l| is_hex_id(l))
            .ok_or_else(|| HistoryError::Corrupt("it has no first commit".into()))
    }

    /// The file that holds HEAD's commit id (the branch HEAD points to, or HEAD).
    fn head_file(&self) -> PathBuf {
        match fs::read_to_string(self.git_dir.join("HEAD")) {
            Ok(s) => match s.trim().strip_prefix("ref: ") {
                Some(r) if clean_rel(r).is_some() => self.git_dir.join(r),
                _ => self.git_dir.join("HEAD"),
            },
            Err(_) => self.git_dir.join("HEAD"),
        }
    }

    pub fn head(&self) -> Result<String, HistoryError> {
        if let Ok(s) = fs::read_to_string(self.head_file()) {
            let s = s.trim();
            if is_hex_id(s) {
                return Ok(s.to_string());
            }
        }
        let id = self
            .git()?
            .line(&["rev-parse", "--verify", "HEAD^{commit}"])?;
        if is_hex_id(&id) {
            Ok(id)
        } else {
            Err(HistoryError::Corrupt("HEAD does not name a commit".into()))
        }
    }

    fn set_head(&self, id: &str) -> Result<(), HistoryError> {
        let file = self.head_file();
        let rel = file
            .strip_prefix(&self.git_dir)
            .unwrap_or(Path::new("HEAD"))
            .to_string_lossy()
            .to_string();
        write_ref(&self.git_dir, &rel, id)
    }

    fn commit_fields(&self, id: &str) -> Result<CommitFields, HistoryError> {
        // Loose or in the session's own packs (the first commit is packed): reading it
        // here saves a git process on every upper-layer commit.
        if let Some((kind, data)) = objects::read_object(&self.git_dir, id)? {
            if kind == "commit" {
                return Ok(objects::parse_commit(&data));
            }
        }
        let data = self
            .git()?
            .run(&["cat-file", "commit", id])
            .map_err(|_| HistoryError::UnknownCommit(id.to_string()))?;
        Ok(objects::parse_commit(&data))
    }

    fn write_commit(
        &self,
        tree: &str,
        parents: &[&str],
        message: &str,
    ) -> Result<String, HistoryError> {
        let body = objects::commit_body(tree, parents, message, objects::now());
        objects::write_loose(&self.git_dir, "commit", &body)
    }

    /// Stages the whole work tree into the index (or `index`), like `git add -A` but
    /// never stopping at a path git cannot take (see `stage.rs`); git's stat cache makes
    /// unchanged files cost one `lstat`. Returns what was left out.
    fn stage_all(&self, index: Option<&Path>) -> Result<Vec<LeftOutPath>, HistoryError> {
        let git = Git {
            index,
            ..self.git()?
        };
        stage::stage(&git, self.max_file_bytes, !self.shadow)
    }

    /// Records `left` as reported; returns the paths not reported before.
    fn note_left_out(&self, left: Vec<LeftOutPath>) -> Vec<LeftOutPath> {
        let known: std::collections::HashSet<String> =
            read_left_out(&self.git_dir.join(LEFT_OUT_FILE))
                .into_iter()
                .map(|l| l.path)
                .collect();
        let fresh: Vec<LeftOutPath> = left
            .into_iter()
            .filter(|l| !known.contains(&l.path))
            .collect();
        if !fresh.is_empty() {
            let mut add = Vec::new();
            for l in &fresh {
                add.extend_from_slice(format!("{}\t{}\0", l.path, l.reason).as_bytes());
            }
            // Losing this note only means a path is reported twice.
            let file = self.git_dir.join(LEFT_OUT_FILE);
            if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&file) {
                let _ = std::io::Write::write_all(&mut f, &add);
            }
        }
        fresh
    }

    /// Paths reported as left out before that are still in the work tree. Once files
    /// of a nested repository are tracked, git walks into it like any directory and no
    /// longer lists its `.git`, so the change set remembers it from here.
    fn left_out_before(&self) -> Vec<LeftOutPath> {
        read_left_out(&self.git_dir.join(LEFT_OUT_FILE))
            .into_iter()
            .filter(|l| {
                !l.path.contains('\u{fffd}')
                    && fs::symlink_metadata(self.files.join(&l.path)).is_ok()
            })
            .collect()
    }

    /// Paths of the project that the initial snapshot could not take (never copied into
    /// the sandbox).
    fn left_out_at_start(&self) -> Vec<LeftOutPath> {
        read_left_out(&self.git_dir.join(LEFT_OUT_AT_START_FILE))
    }

    fn write_tree(&self, index: Option<&Path>) -> Result<String, HistoryError> {
        let git = Git {
            index,
            ..self.git()?
        };
        let id = git.line(&["write-tree"])?;
        if is_hex_id(&id) {
            Ok(id)
        } else {
            Err(HistoryError::Corrupt(format!(
                "git write-tree printed `{id}`"
            )))
        }
    }

    /// Records the index as a commit on HEAD unless its tree equals HEAD's.
    fn commit_index(
        &self,
        message: &str,
        allow_empty: bool,
    ) -> Result<Option<String>, HistoryError> {
        let tree = self.write_tree(None)?;
        let head = self.head()?;
        if !allow_empty && self.commit_fields(&head)?.tree == tree {
            return Ok(None);
        }
        let id = self.write_commit(&tree, &[&head], message)?;
        self.set_head(&id)?;
        Ok(Some(id))
    }

    /// Commits the work tree if anything changed; `None` when nothing did (no empty
    /// commits). `touched`: `Some(paths)` when only these paths (relative, or absolute
    /// inside the work tree) may have changed, the fast path after write/edit tools;
    /// `None` scans everything (after bash). A touched list that git refuses (a
    /// directory, a path through a symlink) falls back to the full scan.
    ///
    /// Paths that cannot be stored (a nested repository's `.git`, a name git refuses, a
    /// file over the size limit) are left out and the rest is committed; see
    /// [`Self::commit_changes_reporting`] to hear about them.
    pub fn commit_changes(
        &self,
        message: &str,
        touched: Option<&[String]>,
    ) -> Result<Option<String>, HistoryError> {
        Ok(self.commit_changes_reporting(message, touched)?.commit)
    }

    /// [`Self::commit_changes`], also returning the paths left out of the history that
    /// were not reported before.
    pub fn commit_changes_reporting(
        &self,
        message: &str,
        touched: Option<&[String]>,
    ) -> Result<CommitOutcome, HistoryError> {
        if matches!(touched, Some([])) {
            return Ok(CommitOutcome::default());
        }
        self.fresh_view()?;
        // An overlay workspace: the upper layer says what changed, whatever the tools.
        if let Some(done) = self.upper_commit(message)? {
            return Ok(done);
        }
        let left = match touched {
            Some([]) => return Ok(CommitOutcome::default()),
            Some(paths) => {
                let cleaned: Option<Vec<String>> = paths
                    .iter()
                    .map(|p| rel_to_root(&self.work_tree, p))
                    .collect();
                if let Some(mut list) = cleaned {
                    list.sort();
                    list.dedup();
                    if let Some(done) = self.fast_commit(&list, message)? {
                        return Ok(CommitOutcome {
                            commit: done,
                            newly_left_out: Vec::new(),
                        });
                    }
                }
                self.stage_all(None)?
            }
            None => self.stage_all(None)?,
        };
        let commit = self.commit_index(message, false)?;
        Ok(CommitOutcome {
            commit,
            newly_left_out: self.note_left_out(left),
        })
    }

    /// Commits the work tree after a full scan through git (the index brought up to
    /// date), as rollback, undo and restore need before git rewrites the work tree.
    fn commit_full(&self, message: &str) -> Result<Option<String>, HistoryError> {
        let left = self.stage_all(None)?;
        let commit = self.commit_index(message, false)?;
        self.note_left_out(left);
        Ok(commit)
    }

    /// The tree of the session's work from an overlay workspace's upper layer (the
    /// base tree with the upper layer applied, see `upper.rs`); `None` without an
    /// overlay or when the full scan must judge.
    fn upper_tree(&self) -> Result<Option<Oid>, HistoryError> {
        let Some(mount) = &self.overlay else {
            return Ok(None);
        };
        let upper_dir = mount.layers().upper.clone();
        let Some(items) = upper::walk(&upper_dir, self.max_file_bytes)? else {
            return Ok(None);
        };
        let base = self.base()?;
        let Some(root) = objects::parse_hex(&self.commit_fields(&base)?.tree) else {
            return Ok(None);
        };
        // New files count only when git would not ignore them (tracked ones always).
        let mut lookup = upper::TreeLookup::new(&self.git_dir, root);
        let mut new_files = Vec::new();
        for (rel, item) in &items {
            if !matches!(item, upper::Item::Gone) && !lookup.has(rel)? {
                new_files.push(rel.as_bytes().to_vec());
            }
        }
        let ignored: std::collections::HashSet<Vec<u8>> = if new_files.is_empty() {
            Default::default()
        } else {
            let kept: std::collections::HashSet<Vec<u8>> =
                stage::not_ignored(&self.git()?, new_files.clone())?
                    .into_iter()
                    .collect();
            new_files
                .into_iter()
                .filter(|f| !kept.contains(f))
                .collect()
        };
        let mut stored: Vec<(String, NewEntry)> = Vec::with_capacity(items.len());
        for (rel, item) in items {
            if matches!(item, upper::Item::Gone) {
                stored.push((rel, None));
                continue;
            }
            if ignored.contains(rel.as_bytes()) {
                continue;
            }
            match upper::store(&self.git_dir, &upper_dir, &rel)? {
                Some(entry) => stored.push((rel, Some(entry))),
                None => return Ok(None),
            }
        }
        let changes: Vec<(Vec<&str>, NewEntry)> = stored
            .iter()
            .map(|(rel, e)| (rel.split('/').collect(), *e))
            .collect();
        let refs: Vec<PathChange<'_>> = changes.iter().map(|(p, s)| (&p[..], *s)).collect();
        Ok(match self.rewrite_tree(Some(root), &refs)? {
            Rewritten::Tree(id) => Some(id),
            Rewritten::Empty => {
                objects::parse_hex(&objects::write_loose(&self.git_dir, "tree", b"")?)
            }
            Rewritten::Fallback => None,
        })
    }

    /// Commits what the upper layer holds (see [`Self::upper_tree`]); `None` when
    /// there is no overlay or the full scan must judge.
    fn upper_commit(&self, message: &str) -> Result<Option<CommitOutcome>, HistoryError> {
        let Some(tree) = self.upper_tree()? else {
            return Ok(None);
        };
        let head = self.head()?;
        if objects::parse_hex(&self.commit_fields(&head)?.tree) == Some(tree) {
            return Ok(Some(CommitOutcome::default()));
        }
        let id = self.write_commit(&objects::hex(&tree), &[&head], message)?;
        self.set_head(&id)?;
        Ok(Some(CommitOutcome {
            commit: Some(id),
            newly_left_out: Vec::new(),
        }))
    }

    /// The touched-paths fast path, without running git: hash the touched files into
    /// loose blobs, rewrite the trees along their paths from HEAD's tree, write the
    /// commit and move the branch. The index is left as it was (a cache: the next full
    /// scan brings it up to date). `None` when a path needs git's judgement (a
    /// directory, a path through a symlink, a packed delta): the caller scans.
    fn fast_commit(
        &self,
        rels: &[String],
        message: &str,
    ) -> Result<Option<Option<String>>, HistoryError> {
        let head = self.head()?;
        let fields = self.commit_fields(&head)?;
        let Some(root) = objects::parse_hex(&fields.tree) else {
            return Ok(None);
        };
        let mut changes: Vec<(Vec<&str>, NewEntry)> = Vec::with_capacity(rels.len());
        for rel in rels {
            let parts: Vec<&str> = rel.split('/').collect();
            let mut cur = self.files.clone();
            let mut gone = false;
            for part in &parts[..parts.len() - 1] {
                cur.push(part);
                match fs::symlink_metadata(&cur) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        gone = true;
                        break;
                    }
                    Err(_) => return Ok(None),
                }
            }
            let path = self.files.join(rel);
            let state = if gone {
                None
            } else {
                match fs::symlink_metadata(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(_) => return Ok(None),
                    Ok(m) if m.file_type().is_symlink() => {
                        let target = fs::read_link(&path)
                            .ctx(|| format!("cannot read the link {}", path.display()))?;
                        let id = objects::write_loose(
                            &self.git_dir,
                            "blob",
                            target.as_os_str().as_bytes(),
                        )?;
                        Some((0o120000, objects::parse_hex(&id).unwrap_or_default()))
                    }
                    // Large files go through git, which streams them (and the limit).
                    Ok(m)
                        if m.is_file()
                            && m.len() > FAST_COMMIT_MAX_BYTES.min(self.max_file_bytes) =>
                    {
                        return Ok(None)
                    }
                    Ok(m) if m.is_file() => {
                        // Read through a descriptor opened without following links,
                        // so a swap after the check above cannot smuggle a host file in.
                        let Ok(Opened::File(file)) = open_beneath(&self.files, rel.as_bytes())
                        else {
                            return Ok(None);
                        };
                        let meta = file
                            .metadata()
                            .ctx(|| format!("cannot stat {}", path.display()))?;
                        if meta.len() > FAST_COMMIT_MAX_BYTES.min(self.max_file_bytes) {
                            return Ok(None);
                        }
                        let mut data = Vec::with_capacity(meta.len() as usize);
                        std::io::Read::read_to_end(
                            &mut std::io::Read::take(file, FAST_COMMIT_MAX_BYTES + 1),
                            &mut data,
                        )
                        .ctx(|| format!("cannot read {}", path.display()))?;
                        if data.len() as u64 != meta.len() {
                            return Ok(None);
                        }
                        let id = objects::write_loose(&self.git_dir, "blob", &data)?;
                        let mode = if meta.permissions().mode() & 0o100 != 0 {
                            0o100755
                        } else {
                            0o100644
                        };
                        Some((mode, objects::parse_hex(&id).unwrap_or_default()))
                    }
                    Ok(_) => return Ok(None),
                }
            };
            changes.push((parts, state));
        }
        let refs: Vec<PathChange<'_>> = changes.iter().map(|(p, s)| (&p[..], *s)).collect();
        let new_root = match self.rewrite_tree(Some(root), &refs)? {
            Rewritten::Tree(id) => id,
            Rewritten::Empty => {
                objects::parse_hex(&objects::write_loose(&self.git_dir, "tree", b"")?)
                    .unwrap_or_default()
            }
            Rewritten::Fallback => return Ok(None),
        };
        if new_root == root {
            return Ok(Some(None));
        }
        let id = self.write_commit(&objects::hex(&new_root), &[&head], message)?;
        self.set_head(&id)?;
        Ok(Some(Some(id)))
    }

    /// `tree` with `changes` (path components below it → new entry, or removal).
    fn rewrite_tree(
        &self,
        tree: Option<Oid>,
        changes: &[PathChange<'_>],
    ) -> Result<Rewritten, HistoryError> {
        let mut entries = match tree {
            Some(id) => match objects::read_object(&self.git_dir, &objects::hex(&id))? {
                Some((kind, data)) if kind == "tree" => match objects::parse_tree(&data) {
                    Some(e) => e,
                    None => return Ok(Rewritten::Fallback),
                },
                _ => return Ok(Rewritten::Fallback),
            },
            None => Vec::new(),
        };
        let mut groups: std::collections::BTreeMap<&str, Vec<PathChange<'_>>> = Default::default();
        for (parts, state) in changes {
            if let Some((first, rest)) = parts.split_first() {
                groups.entry(first).or_default().push((rest, *state));
            }
        }
        for (name, group) in groups {
            let pos = entries.iter().position(|e| e.1 == name.as_bytes());
            let leaves: Vec<_> = group.iter().filter(|(rest, _)| rest.is_empty()).collect();
            let deeper: Vec<PathChange<'_>> = group
                .iter()
                .filter(|(rest, _)| !rest.is_empty())
                .copied()
                .collect();
            if leaves.len() > 1 {
                return Ok(Rewritten::Fallback);
            }
            // A removal with changes below it (an overlay's opaque directory): the
            // entry becomes a tree of exactly those changes, nothing of the old one.
            let fresh = match (leaves.first(), deeper.is_empty()) {
                (Some((_, None)), false) => true,
                (Some(_), false) => return Ok(Rewritten::Fallback),
                _ => false,
            };
            if let Some((_, state)) = leaves.first().filter(|_| !fresh) {
                match (state, pos) {
                    (None, Some(i)) => {
                        entries.remove(i);
                    }
                    (None, None) => {}
                    (Some((mode, id)), Some(i)) => {
                        entries[i] = (*mode, name.as_bytes().to_vec(), *id)
                    }
                    (Some((mode, id)), None) => {
                        entries.push((*mode, name.as_bytes().to_vec(), *id))
                    }
                }
                continue;
            }
            let sub = pos
                .filter(|&i| entries[i].0 == 0o40000 && !fresh)
                .map(|i| entries[i].2);
            match self.rewrite_tree(sub, &deeper)? {
                Rewritten::Fallback => return Ok(Rewritten::Fallback),
                Rewritten::Tree(id) => match pos {
                    Some(i) => entries[i] = (0o40000, name.as_bytes().to_vec(), id),
                    None => entries.push((0o40000, name.as_bytes().to_vec(), id)),
                },
                Rewritten::Empty => {
                    if let Some(i) = pos.filter(|&i| entries[i].0 == 0o40000 || fresh) {
                        entries.remove(i);
                    }
                }
            }
        }
        if entries.is_empty() {
            return Ok(Rewritten::Empty);
        }
        let body = objects::tree_body(&mut entries);
        let id = objects::write_loose(&self.git_dir, "tree", &body)?;
        Ok(objects::parse_hex(&id)
            .map(Rewritten::Tree)
            .unwrap_or(Rewritten::Fallback))
    }

    /// A manual snapshot `🔒 Snapshot: LABEL`, recorded even when nothing changed.
    pub fn snapshot(&self, label: &str) -> Result<String, HistoryError> {
        self.stage_all(None)?;
        let message = format!("{}{}", crate::SNAPSHOT_PREFIX, label.trim());
        let id = self.commit_index(message.trim_end(), true)?;
        id.ok_or_else(|| HistoryError::Corrupt("the snapshot was not recorded".into()))
    }

    /// The history, newest first.
    pub fn log(&self) -> Result<Vec<CommitInfo>, HistoryError> {
        let out = self
            .git()?
            .run(&["log", "--format=%H%x1f%ct%x1f%B%x1e", "HEAD"])?;
        let text = String::from_utf8_lossy(&out);
        let mut commits = Vec::new();
        for rec in text.split('\x1e') {
            let rec = rec.trim_start_matches('\n');
            if rec.is_empty() {
                continue;
            }
            let mut parts = rec.splitn(3, '\x1f');
            let id = parts.next().unwrap_or_default().to_string();
            let time = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            let message = parts.next().unwrap_or_default().trim_end().to_string();
            if is_hex_id(&id) {
                commits.push(CommitInfo {
                    short_id: short(&id),
                    id,
                    message,
                    time,
                });
            }
        }
        Ok(commits)
    }

    fn resolve(&self, rev: &str) -> Result<String, HistoryError> {
        if rev.starts_with('-') || rev.trim().is_empty() {
            return Err(HistoryError::UnknownCommit(rev.to_string()));
        }
        let spec = format!("{rev}^{{commit}}");
        let (ok, out, _) = self
            .git()?
            .run_status(&["rev-parse", "--verify", "--quiet", &spec], None)?;
        let id = String::from_utf8_lossy(&out).trim().to_string();
        if ok && is_hex_id(&id) {
            Ok(id)
        } else {
            Err(HistoryError::UnknownCommit(rev.to_string()))
        }
    }

    /// Puts the work tree back to commit `to` (files added since are removed) and
    /// records that as a new commit `Rollback to <short>`, so history is never lost.
    /// Uncommitted changes are committed first. Returns the new commit.
    pub fn rollback(&self, to: &str) -> Result<String, HistoryError> {
        let target = self.resolve(to)?;
        self.rollback_with_message(&target, &format!("Rollback to {}", short(&target)))
    }

    fn rollback_with_message(&self, target: &str, message: &str) -> Result<String, HistoryError> {
        self.commit_full("Uncommitted changes before rollback")?;
        self.note_host_write();
        self.git()?.run(&["read-tree", "--reset", "-u", target])?;
        let id = self.commit_index(message, true)?;
        id.ok_or_else(|| HistoryError::Corrupt("the rollback was not recorded".into()))
    }

    /// Undoes the last change (the last commit, after committing pending changes):
    /// the work tree goes back to that commit's parent, recorded as a new commit.
    /// Repeated undos keep stepping back. `None` at the session's start.
    pub fn undo(&self) -> Result<Option<String>, HistoryError> {
        self.commit_full("Uncommitted changes before undo")?;
        let head = self.head()?;
        let fields = self.commit_fields(&head)?;
        let state = fields
            .message
            .lines()
            .find_map(|l| l.strip_prefix(UNDO_TRAILER))
            .map(|s| s.trim().to_string())
            .filter(|s| is_hex_id(s));
        let effective = state.unwrap_or_else(|| head.clone());
        if effective == self.base()? {
            return Ok(None);
        }
        let parents = if effective == head {
            fields.parents
        } else {
            self.commit_fields(&effective)?.parents
        };
        let Some(parent) = parents.first() else {
            return Ok(None);
        };
        let message = format!(
            "Undo {}: back to {}\n\n{UNDO_TRAILER}{parent}",
            short(&effective),
            short(parent)
        );
        self.rollback_with_message(parent, &message).map(Some)
    }

    /// Brings `path` (a file or a directory; `None` = everything) back to the session's
    /// base snapshot: changed and deleted files come back, files added since are
    /// removed. Recorded as a commit; returns the restored paths.
    pub fn restore(&self, path: Option<&str>) -> Result<Vec<String>, HistoryError> {
        let rel = match path {
            Some(p) => Some(
                rel_to_root(&self.work_tree, p)
                    .ok_or_else(|| HistoryError::BadPath(p.to_string()))?,
            ),
            None => None,
        };
        self.commit_full("Uncommitted changes before restore")?;
        let base = self.base()?;
        let mut args = vec![
            "diff-index",
            "--cached",
            "--raw",
            "-z",
            "--no-renames",
            "--ignore-submodules=none",
            base.as_str(),
        ];
        if let Some(r) = rel.as_deref() {
            args.push("--");
            args.push(r);
        }
        let out = self.git()?.run(&args)?;
        let raw = parse_diff(&out);
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        self.note_host_write();
        let mut restored = Vec::new();
        let mut from_base = Vec::new();
        for r in &raw {
            if r.status == 'A' {
                if let Some(clean) = clean_rel(&r.path) {
                    let p = self.files.join(&clean);
                    match fs::symlink_metadata(&p) {
                        Ok(m) if !m.is_dir() => {
                            fs::remove_file(&p).ctx(|| format!("cannot remove {}", p.display()))?;
                            remove_empty_parents(&self.files, &clean);
                        }
                        _ => {}
                    }
                }
            } else {
                from_base.push(r.path.clone());
            }
            restored.push(r.path.clone());
        }
        if !from_base.is_empty() {
            let mut input = from_base.join("\0").into_bytes();
            input.push(0);
            self.git()?.run_with_input(
                &[
                    "checkout",
                    &base,
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                ],
                Some(&input),
            )?;
        }
        let message = match path {
            Some(p) => format!("Restore {p} to the session start"),
            None => "Restore all files to the session start".to_string(),
        };
        self.stage_all(None)?;
        self.commit_index(&message, false)?;
        Ok(restored)
    }

    /// Stages the whole work tree into a throw-away index, so reads see uncommitted
    /// changes without committing them. Also returns what was left out.
    fn scratch_index(&self) -> Result<(ScratchIndex, Vec<LeftOutPath>), HistoryError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .git_dir
            .join(format!("index.safe-coder-{}-{n}", std::process::id()));
        let main = self.git_dir.join("index");
        self.pending_index.wait();
        if main.exists() {
            fs::copy(&main, &path).ctx(|| format!("cannot copy {}", main.display()))?;
        }
        let scratch = ScratchIndex(path);
        let left = self.stage_all(Some(&scratch.0))?;
        Ok((scratch, left))
    }

    /// The change set from the base snapshot to the work tree (committed and
    /// uncommitted changes): added, modified, deleted, mode changes, line counts, and
    /// the paths left out of the history. `conflict` is false here; see
    /// [`crate::sync::mark_conflicts`]. What it describes is recorded as the reviewed
    /// state: a later sync writes a file only if it is still exactly as shown.
    pub fn change_set(&self) -> Result<ChangeSet, HistoryError> {
        let scan = self.scan(true)?;
        write_ref(&self.git_dir, REVIEWED_REF, &scan.tree)?;
        Ok(scan.change_set)
    }

    /// Scans the work tree into a scratch index and compares it with the base.
    pub(crate) fn scan(&self, line_counts: bool) -> Result<Scan, HistoryError> {
        if let Some(tree) = self.upper_tree()? {
            let tree = objects::hex(&tree);
            let base = self.base()?;
            let mut args = vec!["diff-tree", "-r", "-z", "--raw", "--no-renames"];
            if line_counts {
                args.push("--numstat");
            }
            args.push(&base);
            args.push(&tree);
            let out = self.git()?.run(&args)?;
            let mut change_set = build_change_set(&out);
            let mut left = self.left_out_at_start();
            left.extend(self.left_out_before());
            left.sort_by(|a, b| a.path.cmp(&b.path));
            left.dedup_by(|a, b| a.path == b.path);
            change_set.left_out = left;
            return Ok(Scan {
                raw: parse_diff(&out),
                change_set,
                tree,
            });
        }
        let (scratch, mut left) = self.scratch_index()?;
        let base = self.base()?;
        let git = Git {
            index: Some(&scratch.0),
            ..self.git()?
        };
        let tree = self.write_tree(Some(&scratch.0))?;
        let mut args = vec!["diff-index", "--cached", "-z", "--raw", "--no-renames"];
        if line_counts {
            args.push("--numstat");
        }
        args.push(&base);
        let out = git.run(&args)?;
        let mut change_set = build_change_set(&out);
        left.extend(self.left_out_at_start());
        left.extend(self.left_out_before());
        left.sort_by(|a, b| a.path.cmp(&b.path));
        left.dedup_by(|a, b| a.path == b.path);
        change_set.left_out = left;
        Ok(Scan {
            raw: parse_diff(&out),
            change_set,
            tree,
        })
    }

    /// The unified diff from the base snapshot to the work tree, for one path (file or
    /// directory) or everything, with terminal control characters escaped (see
    /// [`safe_coder_protocol::text`]). It does not move the reviewed state: a file that
    /// changed since [`Self::change_set`] shows its new content here, and sync skips it
    /// until the change set is computed again.
    pub fn diff(&self, path: Option<&str>) -> Result<String, HistoryError> {
        let rel = match path {
            Some(p) => Some(
                rel_to_root(&self.work_tree, p)
                    .ok_or_else(|| HistoryError::BadPath(p.to_string()))?,
            ),
            None => None,
        };
        if let Some(tree) = self.upper_tree()? {
            let tree = objects::hex(&tree);
            let base = self.base()?;
            let mut args = vec![
                "diff-tree",
                "-r",
                "-p",
                "--no-renames",
                "--no-color",
                "--no-ext-diff",
                base.as_str(),
                tree.as_str(),
            ];
            if let Some(r) = rel.as_deref() {
                args.push("--");
                args.push(r);
            }
            let out = self.git()?.run(&args)?;
            let text = String::from_utf8_lossy(&out);
            return Ok(safe_coder_protocol::text::escape_control_multiline(&text).into_owned());
        }
        let (scratch, _) = self.scratch_index()?;
        let base = self.base()?;
        let git = Git {
            index: Some(&scratch.0),
            ..self.git()?
        };
        let mut args = vec![
            "diff-index",
            "--cached",
            "-p",
            "--no-renames",
            "--no-color",
            "--no-ext-diff",
            base.as_str(),
        ];
        if let Some(r) = rel.as_deref() {
            args.push("--");
            args.push(r);
        }
        let out = git.run(&args)?;
        let text = String::from_utf8_lossy(&out);
        Ok(safe_coder_protocol::text::escape_control_multiline(&text).into_owned())
    }

    /// Entries (mode, blob id) of the tree `rev` for these paths.
    pub(crate) fn tree_entries(
        &self,
        rev: &str,
        paths: &[String],
    ) -> Result<std::collections::HashMap<String, (String, String)>, HistoryError> {
        let mut map = std::collections::HashMap::new();
        // Keep each command line well under the kernel's limit.
        let mut start = 0;
        while start < paths.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < paths.len() && (end == start || bytes + paths[end].len() < 100_000) {
                bytes += paths[end].len() + 1;
                end += 1;
            }
            let mut args: Vec<&str> = vec!["ls-tree", "-r", "-z", "--full-tree", rev, "--"];
            args.extend(paths[start..end].iter().map(String::as_str));
            let out = self.git()?.run(&args)?;
            for rec in out.split(|&b| b == 0) {
                let rec = String::from_utf8_lossy(rec);
                let Some((meta, path)) = rec.split_once('\t') else {
                    continue;
                };
                let mut f = meta.split(' ');
                let (Some(mode), Some(_kind), Some(id)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                map.insert(path.to_string(), (mode.to_string(), id.to_string()));
            }
            start = end;
        }
        Ok(map)
    }

    /// The reviewed tree (see [`Self::change_set`]), if a review happened.
    pub(crate) fn reviewed_tree(&self) -> Option<String> {
        let s = fs::read_to_string(self.git_dir.join(REVIEWED_REF)).ok()?;
        let s = s.trim();
        is_hex_id(s).then(|| s.to_string())
    }

    /// Base-snapshot entries (mode, blob id) for these paths.
    pub(crate) fn base_entries(
        &self,
        paths: &[String],
    ) -> Result<std::collections::HashMap<String, (String, String)>, HistoryError> {
        let base = self.base()?;
        self.tree_entries(&base, paths)
    }
}

/// Reads `path\treason` records, NUL-separated.
fn read_left_out(file: &Path) -> Vec<LeftOutPath> {
    let text = fs::read(file).unwrap_or_default();
    text.split(|&b| b == 0)
        .filter_map(|rec| {
            let rec = String::from_utf8_lossy(rec);
            let (path, reason) = rec.split_once('\t')?;
            Some(LeftOutPath {
                path: path.to_string(),
                reason: reason.to_string(),
            })
        })
        .collect()
}

/// One scan of the work tree against the base.
pub(crate) struct Scan {
    pub raw: Vec<RawChange>,
    pub change_set: ChangeSet,
    /// The scanned tree (base + every change).
    pub tree: String,
}

/// Files above this size are committed by git (streamed), not by the fast path.
const FAST_COMMIT_MAX_BYTES: u64 = 8 << 20;

/// A tree entry's new (mode, id), or `None` for a removal.
type NewEntry = Option<(u32, Oid)>;
/// Path components below a tree, and what becomes of that path.
type PathChange<'a> = (&'a [&'a str], NewEntry);

enum Rewritten {
    Tree(Oid),
    Empty,
    Fallback,
}

struct ScratchIndex(PathBuf);

impl Drop for ScratchIndex {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_file(self.0.with_extension("lock"));
    }
}

/// Removes the now-empty directories above `rel` inside `root`.
pub(crate) fn remove_empty_parents(root: &Path, rel: &str) {
    let mut cur = Path::new(rel).parent();
    while let Some(dir) = cur {
        if dir.as_os_str().is_empty() || fs::remove_dir(root.join(dir)).is_err() {
            break;
        }
        cur = dir.parent();
    }
}

pub(crate) struct RawChange {
    pub old_mode: String,
    pub new_mode: String,
    pub old_id: String,
    pub new_id: String,
    pub status: char,
    pub path: String,
}

/// Parses `--raw -z` records (and skips `--numstat -z` ones, returned separately by
/// [`parse_numstat`]).
pub(crate) fn parse_diff(out: &[u8]) -> Vec<RawChange> {
    let mut res = Vec::new();
    let mut toks = out.split(|&b| b == 0);
    while let Some(tok) = toks.next() {
        if let Some(meta) = tok.strip_prefix(b":") {
            let meta = String::from_utf8_lossy(meta);
            let f: Vec<&str> = meta.split(' ').collect();
            let path = toks
                .next()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            if f.len() >= 5 {
                res.push(RawChange {
                    old_mode: f[0].to_string(),
                    new_mode: f[1].to_string(),
                    old_id: f[2].to_string(),
                    new_id: f[3].to_string(),
                    status: f[4].chars().next().unwrap_or('M'),
                    path,
                });
            }
        }
    }
    res
}

fn parse_numstat(out: &[u8]) -> std::collections::HashMap<String, (u32, u32)> {
    let mut map = std::collections::HashMap::new();
    let mut toks = out.split(|&b| b == 0);
    while let Some(tok) = toks.next() {
        if tok.starts_with(b":") {
            toks.next();
            continue;
        }
        let t = String::from_utf8_lossy(tok);
        let mut f = t.splitn(3, '\t');
        if let (Some(a), Some(d), Some(p)) = (f.next(), f.next(), f.next()) {
            map.insert(
                p.to_string(),
                (a.parse().unwrap_or(0), d.parse().unwrap_or(0)),
            );
        }
    }
    map
}

fn build_change_set(out: &[u8]) -> ChangeSet {
    let counts = parse_numstat(out);
    let mut files: Vec<FileChange> = parse_diff(out)
        .into_iter()
        .map(|r| {
            let kind = match r.status {
                'A' => ChangeKind::Added,
                'D' => ChangeKind::Deleted,
                _ if r.old_id == r.new_id && r.old_mode != r.new_mode => ChangeKind::ModeChanged,
                _ => ChangeKind::Modified,
            };
            let (additions, deletions) = counts.get(&r.path).copied().unwrap_or((0, 0));
            let link_mode = if kind == ChangeKind::Deleted {
                &r.old_mode
            } else {
                &r.new_mode
            };
            FileChange {
                executable: kind != ChangeKind::Deleted && r.new_mode == "100755",
                steers_next_session: safe_coder_protocol::steers_next_session(&r.path),
                is_symlink: link_mode == "120000",
                path: r.path,
                kind,
                additions,
                deletions,
                conflict: false,
                conflict_reason: None,
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    ChangeSet {
        files,
        left_out: Vec::new(),
    }
}
