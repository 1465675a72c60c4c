//! Sync back: applying the agent's accepted changes from the sandbox copy to the
//! project, never overwriting a host file that changed since the session began.
//!
//! No manifest is needed: the base snapshot *is* the record of what the host looked
//! like. A host file is "changed since the session began" when its git blob id and
//! executable bit differ from the base snapshot's entry; it is a conflict when it also
//! differs from the agent's version (a host file that already equals the agent's
//! version counts as applied, which makes an interrupted sync resumable).
//!
//! What is written is exactly what was hashed and shown. The agent's version of a file
//! is never read from the work tree, where a process the agent left running could swap
//! it (or a symlink to a host secret) between the check and the copy: it is streamed
//! from the session's object store (`git cat-file --batch`) and its SHA-1 is checked
//! against the id in the history before the temporary file is renamed into place. A
//! file whose version differs from the one the user last saw (see
//! [`SessionRepo::change_set`]) is skipped, with the reason. Host files are opened
//! without following symlinks. New files get the user's umask; only the executable bit
//! travels from the session, never setuid, setgid or group/world-writable bits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout};

use safe_coder_protocol::{ChangeKind, ChangeSet, FileChange};
use sha1::{Digest, Sha1};

use crate::error::{HistoryError, IoContext};
use crate::objects::{hash_object, hex};
use crate::paths::clean_rel;
use crate::repo::RawChange;
use crate::SessionRepo;

/// What a sync did, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Written to (or removed from) the project, or already equal to the agent's version.
    pub applied: Vec<String>,
    /// Changed on the host since the session began: left alone; the agent's version
    /// stays in the session.
    pub conflicts: Vec<String>,
    /// Not accepted, not part of the change set, or unsafe to write (a path through a
    /// symlinked directory, a directory where the file goes, a nested repository, a
    /// file changed in the sandbox since it was reviewed).
    pub skipped: Vec<String>,
    /// Why each path of `conflicts` and of `skipped` (except those merely not accepted)
    /// was not written: one sentence each.
    pub reasons: BTreeMap<String, String>,
}

/// The state of one path, on disk or in a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Absent,
    File {
        exec: bool,
        id: String,
    },
    Link {
        id: String,
    },
    /// A directory, a device, a nested repository: never synced.
    Other,
}

fn mode_state(mode: &str, id: &str) -> State {
    match mode {
        "100644" => State::File {
            exec: false,
            id: id.to_string(),
        },
        "100755" => State::File {
            exec: true,
            id: id.to_string(),
        },
        "120000" => State::Link { id: id.to_string() },
        "000000" => State::Absent,
        _ => State::Other,
    }
}

fn tree_state(entry: Option<&(String, String)>) -> State {
    match entry {
        None => State::Absent,
        Some((mode, id)) => mode_state(mode, id),
    }
}

/// The state of a host path, read without following a symlink at the path (the caller
/// checked its directories) and without blocking on a FIFO; files are hashed in a
/// stream, however large.
fn host_state(path: &Path) -> Result<State, HistoryError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(State::Absent)
        }
        Err(e) => {
            return Err(HistoryError::io(
                format!("cannot stat {}", path.display()),
                e,
            ))
        }
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target =
            fs::read_link(path).ctx(|| format!("cannot read the link {}", path.display()))?;
        return Ok(State::Link {
            id: hex(&hash_object("blob", target.as_os_str().as_bytes())),
        });
    }
    if !ft.is_file() {
        return Ok(State::Other);
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        // Swapped for a link meanwhile: not a file we may read.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(State::Other),
        Err(e) => {
            return Err(HistoryError::io(
                format!("cannot read {}", path.display()),
                e,
            ))
        }
    };
    let meta = file
        .metadata()
        .ctx(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        return Ok(State::Other);
    }
    let id = hash_stream(file, meta.len()).ctx(|| format!("cannot read {}", path.display()))?;
    Ok(State::File {
        exec: meta.permissions().mode() & 0o100 != 0,
        id,
    })
}

/// The git blob id of what `input` yields, given its length; an input that turns out
/// longer or shorter is an error (the file changed while being read).
fn hash_stream(mut input: impl Read, len: u64) -> std::io::Result<String> {
    let mut sha = Sha1::new();
    sha.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        sha.update(&buf[..n]);
    }
    if total != len {
        return Err(std::io::Error::other("the file changed while it was read"));
    }
    let id: [u8; 20] = sha.finalize().into();
    Ok(hex(&id))
}

/// Why `rel` cannot be written under `project`, if it cannot: each existing ancestor
/// must be a real directory (not a symlink, not a file).
fn unsafe_reason(project: &Path, rel: &str) -> Option<&'static str> {
    let mut cur = project.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Some("a symlink is in the way on the host (one of its directories is a symlink), so it is not written")
            }
            Ok(m) if !m.is_dir() => {
                return Some("a file is in the way on the host where a directory is needed, so it is not written")
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

struct Plan {
    base: State,
    host: State,
    agent: State,
    /// Why the file cannot be written at all (not a conflict: nothing the user changed).
    blocked: Option<String>,
}

/// The agent's state of each changed path, from a scan's raw records.
fn agent_states(raw: &[RawChange]) -> HashMap<&str, State> {
    raw.iter()
        .map(|r| (r.path.as_str(), mode_state(&r.new_mode, &r.new_id)))
        .collect()
}

fn plan(
    repo: &SessionRepo,
    project: &Path,
    files: &[FileChange],
    agent: &HashMap<&str, State>,
    reviewed: Option<&HashMap<String, (String, String)>>,
) -> Result<HashMap<String, Plan>, HistoryError> {
    let paths: Vec<String> = files
        .iter()
        .filter(|f| clean_rel(&f.path).is_some())
        .map(|f| f.path.clone())
        .collect();
    let base = repo.base_entries(&paths)?;
    let mut plans = HashMap::with_capacity(paths.len());
    for p in paths {
        let agent = agent.get(p.as_str()).cloned().unwrap_or(State::Absent);
        let mut blocked = unsafe_reason(project, &p).map(str::to_string);
        let host = if blocked.is_some() {
            State::Other
        } else {
            host_state(&project.join(&p))?
        };
        if blocked.is_none() && host == State::Other {
            blocked = Some(
                "a directory (or another non-file) is in the way on the host, so it is not written"
                    .to_string(),
            );
        }
        if blocked.is_none() && agent == State::Other {
            blocked = Some("the session holds no file here (a nested repository), so there is nothing to write".to_string());
        }
        if let Some(reviewed) = reviewed {
            if blocked.is_none() && tree_state(reviewed.get(&p)) != agent {
                blocked = Some(
                    "it changed in the sandbox after you reviewed it, so it is not written: review the changes again"
                        .to_string(),
                );
            }
        }
        plans.insert(
            p.clone(),
            Plan {
                base: tree_state(base.get(&p)),
                host,
                agent,
                blocked,
            },
        );
    }
    Ok(plans)
}

fn is_conflict(p: &Plan) -> bool {
    p.blocked.is_none() && p.host != p.base && p.host != p.agent
}

const CONFLICT_REASON: &str =
    "changed on the host since the session began; the agent's version stays in the session";

/// Marks the files of `changes` that cannot be synced: those whose host version changed
/// since the session began (it differs from the base snapshot) and differs from the
/// agent's version, and those blocked by something in the way on the host (then
/// `conflict_reason` says what, instead of "changed on the host").
pub fn mark_conflicts(
    repo: &SessionRepo,
    project: &Path,
    changes: &mut ChangeSet,
) -> Result<(), HistoryError> {
    // The agent's versions as last shown (recorded by `change_set`), else a new scan.
    let paths: Vec<String> = changes.files.iter().map(|f| f.path.clone()).collect();
    let (scan, reviewed) = match repo.reviewed_tree() {
        Some(tree) => (None, repo.tree_entries(&tree, &paths)?),
        None => (Some(repo.scan(false)?), HashMap::new()),
    };
    let agent: HashMap<&str, State> = match &scan {
        Some(scan) => agent_states(&scan.raw),
        None => paths
            .iter()
            .map(|p| (p.as_str(), tree_state(reviewed.get(p))))
            .collect(),
    };
    let plans = plan(repo, project, &changes.files, &agent, None)?;
    for f in &mut changes.files {
        match plans.get(&f.path) {
            Some(p) if p.blocked.is_some() => {
                f.conflict = true;
                f.conflict_reason = p.blocked.clone();
            }
            Some(p) => {
                f.conflict = is_conflict(p);
                f.conflict_reason = None;
            }
            None => {
                f.conflict = true;
                f.conflict_reason = Some("its path cannot be written into the project".into());
            }
        }
    }
    Ok(())
}

/// The changed files whose host version still differs from the agent's (what a sync
/// would still have to do, conflicts included). Empty once everything is synced.
pub fn pending(repo: &SessionRepo, project: &Path) -> Result<Vec<String>, HistoryError> {
    let scan = repo.scan(false)?;
    let agent = agent_states(&scan.raw);
    let plans = plan(repo, project, &scan.change_set.files, &agent, None)?;
    let mut out: Vec<String> = scan
        .change_set
        .files
        .iter()
        .filter(|f| plans.get(&f.path).is_none_or(|p| p.host != p.agent))
        .map(|f| f.path.clone())
        .collect();
    out.sort();
    Ok(out)
}

/// Applies the accepted files (all when `accepted` is `None`) from the session to
/// `project`: additions, modifications, deletions, the executable bit and symlinks;
/// never `.git`; each file written atomically (a temporary file in the same directory,
/// checked against its hash, then renamed; removed on any error). A conflicting host
/// file is never overwritten; a file changed in the sandbox since the user last saw it
/// is skipped. Running it again after an interruption finishes the job.
pub fn sync_back(
    repo: &SessionRepo,
    project: &Path,
    accepted: Option<&[String]>,
) -> Result<SyncReport, HistoryError> {
    sync_back_with(repo, project, accepted, &[])
}

/// [`sync_back`], where the paths of `force` are written even when they changed on the
/// host since the session began (the user chose the agent's version over theirs:
/// `sessions sync --theirs`). Everything else holds as in [`sync_back`]: a forced path
/// must be accepted, nothing in the way on the host is replaced, and a file changed in
/// the sandbox since it was reviewed is still skipped.
pub fn sync_back_with(
    repo: &SessionRepo,
    project: &Path,
    accepted: Option<&[String]>,
    force: &[String],
) -> Result<SyncReport, HistoryError> {
    let force: HashSet<String> = force
        .iter()
        .map(|p| clean_rel(p).unwrap_or_else(|| p.clone()))
        .collect();
    let project = fs::canonicalize(project)
        .ctx(|| format!("cannot resolve the project {}", project.display()))?;
    let scan = repo.scan(false)?;
    let changes = &scan.change_set;
    let wanted: Option<HashSet<String>> = accepted.map(|a| {
        a.iter()
            .map(|p| clean_rel(p).unwrap_or_else(|| p.clone()))
            .collect()
    });
    let mut report = SyncReport::default();
    let mut chosen = Vec::new();
    for f in &changes.files {
        if wanted.as_ref().is_some_and(|w| !w.contains(&f.path)) {
            report.skipped.push(f.path.clone());
        } else if clean_rel(&f.path).is_none() {
            report.skipped.push(f.path.clone());
            report.reasons.insert(
                f.path.clone(),
                "its path cannot be written into the project".into(),
            );
        } else {
            chosen.push(f.clone());
        }
    }
    if let Some(w) = &wanted {
        let known: HashSet<&str> = changes.files.iter().map(|f| f.path.as_str()).collect();
        let mut extra: Vec<String> = w
            .iter()
            .filter(|p| !known.contains(p.as_str()))
            .cloned()
            .collect();
        extra.sort();
        for p in &extra {
            report
                .reasons
                .insert(p.clone(), "it is not among the session's changes".into());
        }
        report.skipped.extend(extra);
    }
    let reviewed = match repo.reviewed_tree() {
        Some(tree) => {
            let paths: Vec<String> = chosen.iter().map(|f| f.path.clone()).collect();
            Some(repo.tree_entries(&tree, &paths)?)
        }
        None => None,
    };
    let agent = agent_states(&scan.raw);
    let mut blobs: Option<BlobReader> = None;
    // Deletions first, planned and applied before the rest is planned: a directory the
    // agent replaced by a file (or a file by a directory) is out of the way by then.
    let (gone, rest): (Vec<FileChange>, Vec<FileChange>) = chosen
        .into_iter()
        .partition(|f| f.kind == ChangeKind::Deleted);
    for batch in [gone, rest] {
        sync_batch(
            repo,
            &project,
            &batch,
            &agent,
            reviewed.as_ref(),
            &force,
            &mut blobs,
            &mut report,
        )?;
    }
    report.applied.sort();
    report.conflicts.sort();
    Ok(report)
}

/// Plans and applies one batch of chosen changes (see [`sync_back_with`]).
#[allow(clippy::too_many_arguments)]
fn sync_batch(
    repo: &SessionRepo,
    project: &Path,
    chosen: &[FileChange],
    agent: &HashMap<&str, State>,
    reviewed: Option<&HashMap<String, (String, String)>>,
    force: &HashSet<String>,
    blobs: &mut Option<BlobReader>,
    report: &mut SyncReport,
) -> Result<(), HistoryError> {
    let plans = plan(repo, project, chosen, agent, reviewed)?;
    for f in chosen {
        let Some(p) = plans.get(&f.path) else {
            report.skipped.push(f.path.clone());
            continue;
        };
        if let Some(why) = &p.blocked {
            report.skipped.push(f.path.clone());
            report.reasons.insert(f.path.clone(), why.clone());
            continue;
        }
        let host_path = project.join(&f.path);
        clean_temp(&host_path);
        if p.host == p.agent {
            report.applied.push(f.path.clone());
            continue;
        }
        if is_conflict(p) && !force.contains(&f.path) {
            report.conflicts.push(f.path.clone());
            report
                .reasons
                .insert(f.path.clone(), CONFLICT_REASON.to_string());
            continue;
        }
        apply(repo, project, &f.path, p, blobs)?;
        report.applied.push(f.path.clone());
    }
    Ok(())
}

fn temp_path(host_path: &Path) -> PathBuf {
    let name = host_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    host_path.with_file_name(format!(".{name}.safe-coder-sync"))
}

/// Removes a temporary file left by an interrupted sync.
fn clean_temp(host_path: &Path) {
    let _ = fs::remove_file(temp_path(host_path));
}

/// A temporary file that is removed unless it was renamed into place.
struct Temp(Option<PathBuf>);

impl Temp {
    fn commit(mut self, to: &Path) -> Result<(), HistoryError> {
        if let Some(tmp) = self.0.take() {
            if let Err(e) = fs::rename(&tmp, to) {
                let _ = fs::remove_file(&tmp);
                return Err(HistoryError::io(
                    format!("cannot replace {}", to.display()),
                    e,
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(tmp) = self.0.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// `git cat-file --batch` over the session's objects: blobs streamed out, each checked
/// against its id.
struct BlobReader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl BlobReader {
    fn start(repo: &SessionRepo) -> Result<BlobReader, HistoryError> {
        let mut child = repo.git()?.spawn(&["cat-file", "--batch"])?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HistoryError::Corrupt("git cat-file gave no pipes".into()));
        };
        Ok(BlobReader {
            child,
            stdin,
            stdout: BufReader::with_capacity(256 * 1024, stdout),
        })
    }

    /// Streams blob `id` (the content of `rel`) into `out`; `Err` if the store does not
    /// hold it or what it holds does not hash to `id`.
    fn copy(&mut self, id: &str, rel: &str, out: &mut dyn Write) -> Result<(), HistoryError> {
        let broken = |e: std::io::Error| HistoryError::io("cannot read the session's objects", e);
        writeln!(self.stdin, "{id}").map_err(broken)?;
        self.stdin.flush().map_err(broken)?;
        let mut header = String::new();
        self.stdout.read_line(&mut header).map_err(broken)?;
        let mut f = header.split_whitespace();
        let (Some(got), Some("blob"), Some(size)) = (f.next(), f.next(), f.next()) else {
            return Err(HistoryError::StoredCopyMismatch { path: rel.into() });
        };
        let size: u64 = size
            .parse()
            .map_err(|_| HistoryError::StoredCopyMismatch { path: rel.into() })?;
        if got != id {
            return Err(HistoryError::StoredCopyMismatch { path: rel.into() });
        }
        let mut sha = Sha1::new();
        sha.update(format!("blob {size}\0").as_bytes());
        let mut left = size;
        let mut write_err = None;
        while left > 0 {
            let chunk = self.stdout.fill_buf().map_err(broken)?;
            if chunk.is_empty() {
                return Err(HistoryError::StoredCopyMismatch { path: rel.into() });
            }
            let n = chunk.len().min(left as usize);
            sha.update(&chunk[..n]);
            if write_err.is_none() {
                if let Err(e) = out.write_all(&chunk[..n]) {
                    // Keep reading to the end of the object so the next one lines up.
                    write_err = Some(e);
                }
            }
            self.stdout.consume(n);
            left -= n as u64;
        }
        let mut nl = [0u8; 1];
        self.stdout.read_exact(&mut nl).map_err(broken)?;
        if let Some(e) = write_err {
            return Err(HistoryError::io(format!("cannot write {rel}"), e));
        }
        let digest: [u8; 20] = sha.finalize().into();
        if hex(&digest) != id {
            return Err(HistoryError::StoredCopyMismatch { path: rel.into() });
        }
        Ok(())
    }

    /// A small blob (a symlink target) in memory.
    fn read_small(&mut self, id: &str, rel: &str) -> Result<Vec<u8>, HistoryError> {
        let mut out = Vec::new();
        self.copy(id, rel, &mut out)?;
        Ok(out)
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blobs<'a>(
    repo: &SessionRepo,
    slot: &'a mut Option<BlobReader>,
) -> Result<&'a mut BlobReader, HistoryError> {
    if slot.is_none() {
        *slot = Some(BlobReader::start(repo)?);
    }
    slot.as_mut()
        .ok_or_else(|| HistoryError::Corrupt("git cat-file did not start".into()))
}

fn apply(
    repo: &SessionRepo,
    project: &Path,
    rel: &str,
    p: &Plan,
    reader: &mut Option<BlobReader>,
) -> Result<(), HistoryError> {
    let host_path = project.join(rel);
    match &p.agent {
        State::Absent => {
            if matches!(p.host, State::File { .. } | State::Link { .. }) {
                fs::remove_file(&host_path)
                    .ctx(|| format!("cannot remove {}", host_path.display()))?;
            }
            // Directories the agent emptied and removed go too.
            let mut cur = Path::new(rel).parent();
            while let Some(dir) = cur {
                if dir.as_os_str().is_empty()
                    || fs::symlink_metadata(repo.files().join(dir)).is_ok_and(|m| m.is_dir())
                    || fs::remove_dir(project.join(dir)).is_err()
                {
                    break;
                }
                cur = dir.parent();
            }
            Ok(())
        }
        State::File { exec, id } => {
            ensure_parents(project, rel)?;
            let host_mode = match &p.host {
                State::File { id: host_id, .. } if host_id == id => {
                    // Only the executable bit differs.
                    return set_exec(&host_path, *exec);
                }
                State::File { .. } => fs::symlink_metadata(&host_path)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.permissions().mode() & 0o777),
                _ => None,
            };
            let tmp_path = temp_path(&host_path);
            let _ = fs::remove_file(&tmp_path);
            // A new file is created with 0666/0777 less the user's umask; a replaced
            // file keeps the host file's permissions (less setuid/setgid/sticky), with
            // the executable bit as the agent left it.
            let create_mode = match (host_mode, exec) {
                (Some(_), _) => 0o600,
                (None, true) => 0o777,
                (None, false) => 0o666,
            };
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(create_mode)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp_path)
                .ctx(|| format!("cannot write {}", tmp_path.display()))?;
            let tmp = Temp(Some(tmp_path.clone()));
            blobs(repo, reader)?.copy(id, rel, &mut out)?;
            if let Some(mode) = host_mode {
                out.set_permissions(fs::Permissions::from_mode(with_exec(mode, *exec)))
                    .ctx(|| format!("cannot chmod {}", tmp_path.display()))?;
            }
            drop_checked(out).ctx(|| format!("cannot write {}", tmp_path.display()))?;
            tmp.commit(&host_path)
        }
        State::Link { id } => {
            ensure_parents(project, rel)?;
            let target = blobs(repo, reader)?.read_small(id, rel)?;
            let tmp_path = temp_path(&host_path);
            let _ = fs::remove_file(&tmp_path);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &tmp_path)
                .ctx(|| format!("cannot create the link {}", tmp_path.display()))?;
            Temp(Some(tmp_path)).commit(&host_path)
        }
        State::Other => Ok(()),
    }
}

/// Closes a written file, surfacing a late write error (some file systems report a
/// full disk only then).
fn drop_checked(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd`, so it is open and owned here.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `mode` (permission bits only) with the executable bits set (where readable) or
/// cleared.
fn with_exec(mode: u32, exec: bool) -> u32 {
    let mode = mode & 0o777;
    if exec {
        mode | ((mode & 0o444) >> 2) | 0o100
    } else {
        mode & !0o111
    }
}

fn set_exec(path: &Path, exec: bool) -> Result<(), HistoryError> {
    let meta = fs::symlink_metadata(path).ctx(|| format!("cannot stat {}", path.display()))?;
    let mode = with_exec(meta.permissions().mode(), exec);
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("cannot chmod {}", path.display()))
}

/// Creates the missing directories above `rel` (the ancestors were checked by
/// `unsafe_reason`; a symlink appearing since is refused by `create_dir`).
fn ensure_parents(project: &Path, rel: &str) -> Result<(), HistoryError> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut cur = project.to_path_buf();
    for part in &parts[..parts.len().saturating_sub(1)] {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(HistoryError::io(
                    format!("cannot create the directory {}", cur.display()),
                    std::io::Error::other("something else is in the way"),
                ))
            }
            Err(_) => fs::create_dir(&cur).ctx(|| format!("cannot create {}", cur.display()))?,
        }
    }
    Ok(())
}

/// What [`merge_into_session`] did with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Both sides' changes merged without a conflict; the session's file now holds the
    /// result (committed), for the user to review and take with `--theirs`.
    Merged,
    /// The two sides changed the same lines (this many conflicting hunks): nothing was
    /// written.
    Conflicts(usize),
    /// Not a conflict (the host file is still as the session began, or already equals
    /// the agent's version): nothing to merge.
    NotNeeded,
}

/// A three-way merge of one conflicting file into the session (`sessions sync --merge`):
/// `git merge-file` of the host's version and the agent's, from the session start.
/// Only a clean merge is kept, and only **in the session**: the project is not touched,
/// so the user sees the result (`sessions diff`) before a sync writes it. Only regular
/// files can be merged; the agent's version is read from the session's objects (checked
/// against its id), never from the work tree, and the merged file is written beside the
/// agent's without following a symlink.
pub fn merge_into_session(
    repo: &SessionRepo,
    project: &Path,
    rel: &str,
) -> Result<MergeOutcome, HistoryError> {
    let rel = clean_rel(rel).ok_or_else(|| HistoryError::BadPath(rel.to_string()))?;
    let project = fs::canonicalize(project)
        .ctx(|| format!("cannot resolve the project {}", project.display()))?;
    let scan = repo.scan(false)?;
    let agent = agent_states(&scan.raw)
        .get(rel.as_str())
        .cloned()
        .unwrap_or(State::Absent);
    let base = tree_state(repo.base_entries(std::slice::from_ref(&rel))?.get(&rel));
    let not_files = || {
        HistoryError::Io {
        context: format!("cannot merge {rel}"),
        source: std::io::Error::other(
            "only a regular file changed on both sides can be merged: take one side with --theirs or --ours",
        ),
    }
    };
    if unsafe_reason(&project, &rel).is_some() || unsafe_reason(repo.files(), &rel).is_some() {
        return Err(not_files());
    }
    let host = host_state(&project.join(&rel))?;
    if host == base || host == agent {
        return Ok(MergeOutcome::NotNeeded);
    }
    let (
        State::File { id: base_id, .. },
        State::File {
            id: agent_id,
            exec: agent_exec,
        },
        State::File { id: host_id, .. },
    ) = (&base, &agent, &host)
    else {
        return Err(not_files());
    };
    // A private directory for the three inputs, removed whatever happens.
    let dir = repo
        .git_dir()
        .join(format!("merge.safe-coder-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).ctx(|| format!("cannot create {}", dir.display()))?;
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let mut blobs = BlobReader::start(repo)?;
    let mut write_blob = |id: &str, name: &str| -> Result<PathBuf, HistoryError> {
        let path = dir.join(name);
        let mut out = File::create(&path).ctx(|| format!("cannot write {}", path.display()))?;
        blobs.copy(id, &rel, &mut out)?;
        Ok(path)
    };
    let base_file = write_blob(base_id, "base")?;
    let agent_file = write_blob(agent_id, "agent")?;
    let host_file = dir.join("host");
    {
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(project.join(&rel))
            .ctx(|| format!("cannot read {}", project.join(&rel).display()))?;
        let mut bytes = Vec::new();
        input
            .read_to_end(&mut bytes)
            .ctx(|| format!("cannot read {}", project.join(&rel).display()))?;
        if &crate::blob_id(&bytes) != host_id {
            return Err(HistoryError::ChangedDuringCopy {
                path: project.join(&rel),
            });
        }
        fs::write(&host_file, &bytes).ctx(|| format!("cannot write {}", host_file.display()))?;
    }
    let (host_s, base_s, agent_s) = (
        host_file.to_string_lossy().into_owned(),
        base_file.to_string_lossy().into_owned(),
        agent_file.to_string_lossy().into_owned(),
    );
    let (clean, merged, stderr) = repo.git()?.run_status(
        &[
            "merge-file",
            "-p",
            "-L",
            "yours",
            "-L",
            "session start",
            "-L",
            "agent",
            &host_s,
            &base_s,
            &agent_s,
        ],
        None,
    )?;
    if !clean {
        let err = String::from_utf8_lossy(&stderr).trim().to_string();
        if !err.is_empty() {
            return Err(HistoryError::Git {
                command: "merge-file".into(),
                stderr: err,
            });
        }
        let hunks = merged
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"<<<<<<< "))
            .count();
        return Ok(MergeOutcome::Conflicts(hunks.max(1)));
    }
    // Into the session's copy, atomically, never through a link the agent left there.
    repo.note_host_write();
    let target = repo.files().join(&rel);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => {}
        _ => return Err(not_files()),
    }
    let tmp_path = temp_path(&target);
    let _ = fs::remove_file(&tmp_path);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if *agent_exec { 0o755 } else { 0o644 })
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp_path)
        .ctx(|| format!("cannot write {}", tmp_path.display()))?;
    let tmp = Temp(Some(tmp_path.clone()));
    out.write_all(&merged)
        .ctx(|| format!("cannot write {}", tmp_path.display()))?;
    drop_checked(out).ctx(|| format!("cannot write {}", tmp_path.display()))?;
    tmp.commit(&target)?;
    repo.commit_changes(&format!("Merged the host's changes into {rel}"), None)?;
    Ok(MergeOutcome::Merged)
}
