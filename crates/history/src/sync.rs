//! Sync back: applying the agent's accepted changes from the sandbox copy to the
//! project, never overwriting a host file that changed since the session began.
//!
//! No manifest is needed: the base snapshot *is* the record of what the host looked
//! like. A host file is "changed since the session began" when its git blob id and
//! executable bit differ from the base snapshot's entry; it is a conflict when it also
//! differs from the agent's version (a host file that already equals the agent's
//! version counts as applied, which makes an interrupted sync resumable).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use safe_coder_protocol::{ChangeSet, FileChange};

use crate::error::{HistoryError, IoContext};
use crate::objects::{hash_object, hex};
use crate::paths::clean_rel;
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
    /// symlinked directory, a file where a directory is needed, a nested repository).
    pub skipped: Vec<String>,
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

fn tree_state(entry: Option<&(String, String)>) -> State {
    match entry {
        None => State::Absent,
        Some((mode, id)) => match mode.as_str() {
            "100644" => State::File {
                exec: false,
                id: id.clone(),
            },
            "100755" => State::File {
                exec: true,
                id: id.clone(),
            },
            "120000" => State::Link { id: id.clone() },
            _ => State::Other,
        },
    }
}

fn disk_state(path: &Path) -> Result<State, HistoryError> {
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
        Ok(State::Link {
            id: hex(&hash_object("blob", target.as_os_str().as_bytes())),
        })
    } else if ft.is_file() {
        let data = fs::read(path).ctx(|| format!("cannot read {}", path.display()))?;
        Ok(State::File {
            exec: meta.permissions().mode() & 0o100 != 0,
            id: hex(&hash_object("blob", &data)),
        })
    } else {
        Ok(State::Other)
    }
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
                return Some("goes through a symlinked directory")
            }
            Ok(m) if !m.is_dir() => return Some("a file is where a directory is needed"),
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
    unsafe_reason: Option<&'static str>,
}

fn plan(
    repo: &SessionRepo,
    project: &Path,
    files: &[FileChange],
) -> Result<HashMap<String, Plan>, HistoryError> {
    let paths: Vec<String> = files
        .iter()
        .filter(|f| clean_rel(&f.path).is_some())
        .map(|f| f.path.clone())
        .collect();
    let base = repo.base_entries(&paths)?;
    let mut plans = HashMap::with_capacity(paths.len());
    for p in paths {
        let reason = unsafe_reason(project, &p);
        let host = if reason.is_some() {
            State::Other
        } else {
            disk_state(&project.join(&p))?
        };
        let agent = disk_state(&repo.work_tree().join(&p))?;
        plans.insert(
            p.clone(),
            Plan {
                base: tree_state(base.get(&p)),
                host,
                agent,
                unsafe_reason: reason,
            },
        );
    }
    Ok(plans)
}

fn is_conflict(p: &Plan) -> bool {
    p.host != p.base && p.host != p.agent
}

/// Marks the files of `changes` whose host version changed since the session began
/// (it differs from the base snapshot) and differs from the agent's version.
pub fn mark_conflicts(
    repo: &SessionRepo,
    project: &Path,
    changes: &mut ChangeSet,
) -> Result<(), HistoryError> {
    let plans = plan(repo, project, &changes.files)?;
    for f in &mut changes.files {
        f.conflict = match plans.get(&f.path) {
            Some(p) => is_conflict(p),
            None => true,
        };
    }
    Ok(())
}

/// The changed files whose host version still differs from the agent's (what a sync
/// would still have to do, conflicts included). Empty once everything is synced.
pub fn pending(repo: &SessionRepo, project: &Path) -> Result<Vec<String>, HistoryError> {
    let changes = repo.changes(false)?;
    let plans = plan(repo, project, &changes.files)?;
    let mut out: Vec<String> = changes
        .files
        .iter()
        .filter(|f| plans.get(&f.path).is_none_or(|p| p.host != p.agent))
        .map(|f| f.path.clone())
        .collect();
    out.sort();
    Ok(out)
}

/// Applies the accepted files (all when `accepted` is `None`) from the session's work
/// tree to `project`: additions, modifications, deletions, the executable bit and
/// symlinks; never `.git`; each file written atomically (a temporary file in the same
/// directory, then rename). A conflicting host file is never overwritten. Running it
/// again after an interruption finishes the job.
pub fn sync_back(
    repo: &SessionRepo,
    project: &Path,
    accepted: Option<&[String]>,
) -> Result<SyncReport, HistoryError> {
    let project = fs::canonicalize(project)
        .ctx(|| format!("cannot resolve the project {}", project.display()))?;
    let changes = repo.changes(false)?;
    let wanted: Option<HashSet<String>> = accepted.map(|a| {
        a.iter()
            .map(|p| clean_rel(p).unwrap_or_else(|| p.clone()))
            .collect()
    });
    let mut report = SyncReport::default();
    let mut chosen = Vec::new();
    for f in &changes.files {
        if wanted.as_ref().is_some_and(|w| !w.contains(&f.path)) || clean_rel(&f.path).is_none() {
            report.skipped.push(f.path.clone());
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
        report.skipped.extend(extra);
    }
    let plans = plan(repo, &project, &chosen)?;
    for f in &chosen {
        let Some(p) = plans.get(&f.path) else {
            report.skipped.push(f.path.clone());
            continue;
        };
        if p.unsafe_reason.is_some() || p.agent == State::Other {
            report.skipped.push(f.path.clone());
            continue;
        }
        let host_path = project.join(&f.path);
        clean_temp(&host_path);
        if p.host == p.agent {
            report.applied.push(f.path.clone());
            continue;
        }
        if is_conflict(p) {
            report.conflicts.push(f.path.clone());
            continue;
        }
        apply(repo, &project, &f.path, p)?;
        report.applied.push(f.path.clone());
    }
    Ok(report)
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

fn apply(repo: &SessionRepo, project: &Path, rel: &str, p: &Plan) -> Result<(), HistoryError> {
    let host_path = project.join(rel);
    let agent_path = repo.work_tree().join(rel);
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
                    || repo.work_tree().join(dir).exists()
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
            if let State::File { id: host_id, .. } = &p.host {
                if host_id == id {
                    // Only the executable bit differs.
                    return set_exec(&host_path, *exec);
                }
            }
            let data =
                fs::read(&agent_path).ctx(|| format!("cannot read {}", agent_path.display()))?;
            let mode = match fs::symlink_metadata(&host_path) {
                Ok(m) if m.is_file() => with_exec(m.permissions().mode() & 0o7777, *exec),
                _ => fs::metadata(&agent_path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0o644),
            };
            let tmp = temp_path(&host_path);
            let _ = fs::remove_file(&tmp);
            let write = || -> std::io::Result<()> {
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&tmp)?;
                out.write_all(&data)?;
                out.set_permissions(fs::Permissions::from_mode(mode))?;
                Ok(())
            };
            write().ctx(|| format!("cannot write {}", tmp.display()))?;
            fs::rename(&tmp, &host_path).ctx(|| format!("cannot replace {}", host_path.display()))
        }
        State::Link { .. } => {
            ensure_parents(project, rel)?;
            let target = fs::read_link(&agent_path)
                .ctx(|| format!("cannot read the link {}", agent_path.display()))?;
            let tmp = temp_path(&host_path);
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp)
                .ctx(|| format!("cannot create the link {}", tmp.display()))?;
            fs::rename(&tmp, &host_path).ctx(|| format!("cannot replace {}", host_path.display()))
        }
        State::Other => Ok(()),
    }
}

/// `mode` with the executable bits set (where readable) or cleared.
fn with_exec(mode: u32, exec: bool) -> u32 {
    if exec {
        mode | ((mode & 0o444) >> 2) | 0o100
    } else {
        mode & !0o111
    }
}

fn set_exec(path: &Path, exec: bool) -> Result<(), HistoryError> {
    let meta = fs::symlink_metadata(path).ctx(|| format!("cannot stat {}", path.display()))?;
    let mode = with_exec(meta.permissions().mode() & 0o7777, exec);
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
