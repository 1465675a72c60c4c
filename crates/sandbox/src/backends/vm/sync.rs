//! Keeping the guest's `/workspace` and the session's host work tree the same.
//!
//! The host work tree is the one the core commits after each tool call, reviews and
//! syncs back, exactly as for every other backend; the guest's copy is where commands
//! run. Both directions go through the agent:
//!
//! - **host → guest** ([`WorkspaceSync::push`]), before each command: the host tree is
//!   walked (a `stat` per file) and compared with [`HostIndex`], the state it had after
//!   the last exchange; what differs is written to (or removed from) the guest. This
//!   covers the first upload, the file tools' writes (they act on the host copy), and a
//!   `/rollback` or `/restore` that moved the host tree back.
//! - **guest → host** ([`WorkspaceSync::pull`]), after each command: the agent reports
//!   exactly which files changed since its mark; those are copied into the host tree
//!   (temp file + rename, never through a symlink, never outside the tree).
//!
//! Requests go out many at a time (the protocol multiplexes them), so a transfer costs
//! bandwidth, not one vsock round trip per file.
//!
//! Not carried: empty directories (git does not track them either) and special files.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safe_coder_vm_protocol::{ChangeKind, ExecRequest, FileKind, Request};
use tokio::task::JoinSet;

use super::agent_client::{AgentClient, AgentClientError};
use crate::paths::resolve_in_root;
use crate::{CancellationToken, SandboxError};

/// A file read from the guest: its path, contents and mode.
type Pulled = (String, Vec<u8>, u32);

/// Requests in flight at once during a transfer.
const IN_FLIGHT: usize = 32;

/// What the host knows of one path of its work tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub symlink_target: Option<String>,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub mode: u32,
}

/// Path (relative, `/`-separated) → what it was at the last exchange.
pub(crate) type HostIndex = BTreeMap<String, Entry>;

fn entry_of(path: &Path) -> Option<Entry> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let ft = m.file_type();
    let symlink_target = if ft.is_symlink() {
        Some(
            std::fs::read_link(path)
                .ok()?
                .to_string_lossy()
                .into_owned(),
        )
    } else if ft.is_file() {
        None
    } else {
        return None;
    };
    Some(Entry {
        symlink_target,
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        ino: m.ino(),
        mode: m.permissions().mode() & 0o7777,
    })
}

/// Every file and symlink under `root` (not following symlinks).
pub(crate) fn scan(root: &Path) -> HostIndex {
    let mut out = HostIndex::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push((path, child_rel)),
                Ok(_) => {
                    if let Some(entry) = entry_of(&path) {
                        out.insert(child_rel, entry);
                    }
                }
                Err(_) => {}
            }
        }
    }
    out
}

fn io_err(path: &Path, source: std::io::Error) -> SandboxError {
    SandboxError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn agent_err(e: AgentClientError) -> SandboxError {
    SandboxError::Other(e.to_string())
}

/// Splits `rel` into its parent's real host path (inside `root`) and its last name.
fn parent_and_name(root: &Path, rel: &str) -> Result<(PathBuf, String), SandboxError> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(SandboxError::OutsideRoot(rel.to_string()));
    }
    let parent = if parent.is_empty() {
        std::fs::canonicalize(root).map_err(|e| io_err(root, e))?
    } else {
        resolve_in_root(root, parent)?
    };
    Ok((parent, name.to_string()))
}

/// Makes room for a file or symlink at `target`: a directory there is removed.
fn clear_dir(target: &Path) -> Result<(), SandboxError> {
    if let Ok(m) = std::fs::symlink_metadata(target) {
        if m.is_dir() {
            std::fs::remove_dir_all(target).map_err(|e| io_err(target, e))?;
        }
    }
    Ok(())
}

fn temp_beside(parent: &Path, name: &str) -> PathBuf {
    parent.join(format!(".{name}.sc-pull-{:08x}", fastrand_u32()))
}

fn fastrand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    n ^ std::process::id().rotate_left(16)
}

/// Writes a pulled file: temp file in the same directory, mode, rename over the target
/// (a symlink there is replaced, never followed).
pub(crate) fn place_file(
    root: &Path,
    rel: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), SandboxError> {
    let (parent, name) = parent_and_name(root, rel)?;
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let target = parent.join(&name);
    clear_dir(&target)?;
    let tmp = temp_beside(&parent, &name);
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, data)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(&target, e)
    })
}

pub(crate) fn place_symlink(root: &Path, rel: &str, link_target: &str) -> Result<(), SandboxError> {
    let (parent, name) = parent_and_name(root, rel)?;
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let target = parent.join(&name);
    clear_dir(&target)?;
    let tmp = temp_beside(&parent, &name);
    std::os::unix::fs::symlink(link_target, &tmp).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(&target, e)
    })
}

pub(crate) fn remove_file(root: &Path, rel: &str) -> Result<(), SandboxError> {
    let (parent, name) = parent_and_name(root, rel)?;
    let target = parent.join(&name);
    match std::fs::symlink_metadata(&target) {
        Ok(m) if !m.is_dir() => std::fs::remove_file(&target).map_err(|e| io_err(&target, e)),
        _ => Ok(()),
    }
}

pub(crate) fn chmod_file(root: &Path, rel: &str, mode: u32) -> Result<(), SandboxError> {
    let (parent, name) = parent_and_name(root, rel)?;
    let target = parent.join(&name);
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_err(&target, e))
        }
        _ => Ok(()),
    }
}

/// The two directions, over one host work tree.
pub(crate) struct WorkspaceSync {
    pub root: PathBuf,
    pub index: HostIndex,
    /// The agent's mark after the last exchange.
    pub mark: Option<u64>,
    /// A shared workspace (`share.rs`): host and guest see the same files, so both
    /// directions are no-ops.
    pub shared: bool,
}

/// How many files one exchange moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    pub written: usize,
    pub removed: usize,
}

impl WorkspaceSync {
    pub fn new(root: PathBuf) -> Self {
        WorkspaceSync {
            root,
            index: HostIndex::new(),
            mark: None,
            shared: false,
        }
    }

    /// The sync of a shared workspace: nothing to move either way.
    pub fn shared(root: PathBuf) -> Self {
        WorkspaceSync {
            shared: true,
            ..WorkspaceSync::new(root)
        }
    }

    /// Host → guest: what changed on the host since the last exchange. Sets a new mark
    /// afterwards when anything moved (so the next pull does not bring it back).
    pub async fn push(&mut self, agent: &Arc<AgentClient>) -> Result<Moved, SandboxError> {
        if self.shared {
            return Ok(Moved::default());
        }
        let root = self.root.clone();
        let now = tokio::task::spawn_blocking(move || scan(&root))
            .await
            .map_err(|e| SandboxError::Other(format!("scanning the work tree failed: {e}")))?;
        let mut moved = Moved::default();
        let mut links = Vec::new();
        let mut set: JoinSet<Result<(), SandboxError>> = JoinSet::new();
        for (rel, e) in &now {
            if self.index.get(rel) == Some(e) {
                continue;
            }
            moved.written += 1;
            if let Some(t) = &e.symlink_target {
                links.push((rel.clone(), t.clone()));
                continue;
            }
            while set.len() >= IN_FLIGHT {
                if let Some(r) = set.join_next().await {
                    r.map_err(|e| SandboxError::Other(e.to_string()))??;
                }
            }
            let agent = agent.clone();
            let path = self.root.join(rel);
            let rel = rel.clone();
            let mode = e.mode;
            set.spawn(async move {
                let data = tokio::fs::read(&path).await.map_err(|e| io_err(&path, e))?;
                agent.write_file(&rel, &data, mode).await.map_err(agent_err)
            });
        }
        for rel in self.index.keys() {
            if now.contains_key(rel) {
                continue;
            }
            moved.removed += 1;
            while set.len() >= IN_FLIGHT {
                if let Some(r) = set.join_next().await {
                    r.map_err(|e| SandboxError::Other(e.to_string()))??;
                }
            }
            let agent = agent.clone();
            let rel = rel.clone();
            set.spawn(async move {
                agent
                    .done(&Request::Remove { path: rel }, &[])
                    .await
                    .map_err(agent_err)
            });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| SandboxError::Other(e.to_string()))??;
        }
        if !links.is_empty() {
            let script: Vec<String> = links
                .iter()
                .map(|(rel, t)| {
                    let q = super::qmp::shell_quote;
                    let dir = rel.rsplit_once('/').map_or(".", |(d, _)| d);
                    format!(
                        "mkdir -p -- {} && rm -rf -- {} && ln -s -- {} {}",
                        q(dir),
                        q(rel),
                        q(t),
                        q(rel)
                    )
                })
                .collect();
            let mut req = ExecRequest::shell(
                script.join(" && "),
                vec![(
                    "PATH".to_string(),
                    "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                )],
            );
            req.timeout_ms = Some(60_000);
            let r = agent
                .exec(req, 4096, &CancellationToken::new())
                .await
                .map_err(agent_err)?;
            if r.exit.code != Some(0) {
                return Err(SandboxError::Other(format!(
                    "creating symlinks in the VM failed: {}",
                    String::from_utf8_lossy(&r.output).trim()
                )));
            }
        }
        self.index = now;
        if moved != Moved::default() || self.mark.is_none() {
            self.mark = Some(agent.set_mark().await.map_err(agent_err)?);
        }
        Ok(moved)
    }

    /// Guest → host: exactly the files the agent reports changed since the mark.
    pub async fn pull(&mut self, agent: &Arc<AgentClient>) -> Result<Moved, SandboxError> {
        if self.shared {
            return Ok(Moved::default());
        }
        let Some(mark) = self.mark else {
            self.mark = Some(agent.set_mark().await.map_err(agent_err)?);
            return Ok(Moved::default());
        };
        let (changes, new_mark) = match agent.changes_since(mark).await {
            Ok(x) => x,
            Err(AgentClientError::Agent(e))
                if e.kind == safe_coder_vm_protocol::ErrorKind::UnknownMark =>
            {
                return self.pull_everything(agent).await;
            }
            Err(e) => return Err(agent_err(e)),
        };
        let mut moved = Moved::default();
        let mut set: JoinSet<Result<Pulled, SandboxError>> = JoinSet::new();
        let mut touched = Vec::new();
        for c in changes {
            touched.push(c.path.clone());
            match c.kind {
                ChangeKind::Deleted => {
                    moved.removed += 1;
                    remove_file(&self.root, &c.path)?;
                }
                ChangeKind::ModeChanged => {
                    if let Some(s) = &c.stat {
                        chmod_file(&self.root, &c.path, s.mode)?;
                    }
                }
                ChangeKind::Written => match c.stat.as_ref().map(|s| (s.kind, s.target.clone())) {
                    Some((FileKind::Symlink, Some(t))) => {
                        moved.written += 1;
                        place_symlink(&self.root, &c.path, &t)?;
                    }
                    Some((FileKind::File, _)) => {
                        moved.written += 1;
                        while set.len() >= IN_FLIGHT {
                            if let Some(r) = set.join_next().await {
                                let (rel, data, mode) =
                                    r.map_err(|e| SandboxError::Other(e.to_string()))??;
                                place_file(&self.root, &rel, &data, mode)?;
                            }
                        }
                        let agent = agent.clone();
                        let rel = c.path.clone();
                        set.spawn(async move {
                            let (data, mode) = agent.read_file(&rel).await.map_err(agent_err)?;
                            Ok((rel, data, mode))
                        });
                    }
                    _ => {}
                },
            }
        }
        while let Some(r) = set.join_next().await {
            let (rel, data, mode) = r.map_err(|e| SandboxError::Other(e.to_string()))??;
            place_file(&self.root, &rel, &data, mode)?;
        }
        for rel in touched {
            match entry_of(&self.root.join(&rel)) {
                Some(e) => {
                    self.index.insert(rel, e);
                }
                None => {
                    self.index.remove(&rel);
                }
            }
        }
        self.mark = Some(new_mark);
        Ok(moved)
    }

    /// The agent forgot our mark: compare the whole guest tree with the host's by
    /// listing it, and pull every file (rare: the agent keeps the last 8 marks).
    async fn pull_everything(&mut self, agent: &Arc<AgentClient>) -> Result<Moved, SandboxError> {
        // A fresh mark, then a full push makes the guest equal to the host again; the
        // guest's unreported changes are lost only in this case, which needs more than
        // eight marks taken by someone else between two of ours.
        self.index.clear();
        self.mark = None;
        self.push(agent).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn placing_never_leaves_the_root_and_replaces_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        let e = place_file(&root, "out/x", b"no", 0o644).unwrap_err();
        assert!(matches!(e, SandboxError::OutsideRoot(_)), "{e}");
        assert!(!outside.join("x").exists());

        std::fs::write(outside.join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root.join("link")).unwrap();
        place_file(&root, "link", b"new", 0o755).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read_to_string(root.join("link")).unwrap(), "new");
        let m = std::fs::symlink_metadata(root.join("link")).unwrap();
        assert!(m.is_file() && m.permissions().mode() & 0o777 == 0o755);

        place_file(&root, "a/b/c.txt", b"deep", 0o644).unwrap();
        place_symlink(&root, "a/l", "b/c.txt").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("a/l")).unwrap(), "deep");
        chmod_file(&root, "a/b/c.txt", 0o700).unwrap();
        let idx = scan(&root);
        assert_eq!(idx["a/b/c.txt"].mode, 0o700);
        assert_eq!(idx["a/l"].symlink_target.as_deref(), Some("b/c.txt"));
        assert!(idx.contains_key("out"), "a symlink is listed, not followed");
        assert!(!idx.keys().any(|k| k.starts_with("out/")));
        remove_file(&root, "a/b/c.txt").unwrap();
        assert!(!root.join("a/b/c.txt").exists());
        assert!(parent_and_name(&root, "a/..").is_err());
    }
}
