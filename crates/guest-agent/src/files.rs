//! File requests under the workspace: read, write, stat, list, remove.
//!
//! Paths are resolved one component at a time, so neither `..` nor a symlink (in a
//! parent, or a final one that is followed) can lead outside the workspace. Inside the
//! VM this is about meaning, not security: the VM is the boundary, and the agent's
//! commands can change the tree at any time.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safe_coder_vm_protocol::{AgentError, DirEntry, ErrorKind, FileKind, FileStat, WORKSPACE};

/// The workspace root (canonical) every path is resolved against.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
}

fn io_error(path: &str, e: &io::Error) -> AgentError {
    match e.kind() {
        io::ErrorKind::NotFound => {
            AgentError::new(ErrorKind::NotFound, format!("file not found: {path}"))
        }
        _ if e.raw_os_error() == Some(libc::EISDIR) => AgentError::new(
            ErrorKind::IsDirectory,
            format!("'{path}' is a directory, not a file"),
        ),
        _ => AgentError::new(ErrorKind::Io, format!("{path}: {e}")),
    }
}

fn outside(path: &str) -> AgentError {
    AgentError::new(
        ErrorKind::OutsideWorkspace,
        format!("path '{path}' is outside the workspace; use a path inside the project"),
    )
}

pub(crate) fn kind_of(ft: fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

fn describe_other(ft: fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

pub(crate) fn stat_of(path: &Path, md: &fs::Metadata) -> FileStat {
    let kind = kind_of(md.file_type());
    FileStat {
        kind,
        size: md.len(),
        mode: md.mode() & 0o7777,
        target: if kind == FileKind::Symlink {
            fs::read_link(path)
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        },
    }
}

impl Workspace {
    /// The workspace at `root`, which must exist.
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(Workspace {
            root: fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The components of `path` relative to the workspace; `..` and absolute paths
    /// outside [`WORKSPACE`] (or the real root, when it differs) are refused.
    fn components<'a>(&self, path: &'a str) -> Result<Vec<&'a str>, AgentError> {
        let rel = if let Some(rest) = path.strip_prefix(WORKSPACE) {
            if !(rest.is_empty() || rest.starts_with('/')) {
                return Err(outside(path));
            }
            rest
        } else if let Some(rest) = self
            .root
            .to_str()
            .and_then(|root| path.strip_prefix(root))
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            rest
        } else if path.starts_with('/') {
            return Err(outside(path));
        } else {
            path
        };
        let mut out = Vec::new();
        for c in Path::new(rel).components() {
            match c {
                Component::Normal(s) => match s.to_str() {
                    Some(s) => out.push(s),
                    None => {
                        return Err(AgentError::new(
                            ErrorKind::InvalidRequest,
                            "path is not UTF-8",
                        ))
                    }
                },
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => return Err(outside(path)),
            }
        }
        Ok(out)
    }

    /// Follows a symlink at `p` and checks that it stays inside the workspace.
    fn follow(&self, original: &str, p: &Path) -> Result<PathBuf, AgentError> {
        let target = fs::canonicalize(p).map_err(|e| io_error(original, &e))?;
        if target.starts_with(&self.root) {
            Ok(target)
        } else {
            Err(outside(original))
        }
    }

    /// The parent directory of `path` (symlinks followed and checked, missing
    /// directories created when `create`) and the final name (`None` for the root).
    fn parent_of(&self, path: &str, create: bool) -> Result<(PathBuf, Option<String>), AgentError> {
        let comps = self.components(path)?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok((self.root.clone(), None));
        };
        let mut cur = self.root.clone();
        for c in parents {
            let next = cur.join(c);
            match fs::symlink_metadata(&next) {
                Ok(md) if md.file_type().is_symlink() => cur = self.follow(path, &next)?,
                Ok(md) if md.is_dir() => cur = next,
                Ok(_) => {
                    return Err(AgentError::new(
                        ErrorKind::Io,
                        format!("{path}: '{c}' is not a directory"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match fs::create_dir(&next) {
                        Ok(()) => {}
                        // Another write into the same new directory (the host sends
                        // many at once) made it first.
                        Err(e)
                            if e.kind() == io::ErrorKind::AlreadyExists
                                && fs::symlink_metadata(&next).is_ok_and(|m| m.is_dir()) => {}
                        Err(e) => return Err(io_error(path, &e)),
                    }
                    cur = next;
                }
                Err(e) => return Err(io_error(path, &e)),
            }
        }
        if !cur.is_dir() {
            return Err(AgentError::new(
                ErrorKind::Io,
                format!("{path}: a parent is not a directory"),
            ));
        }
        Ok((cur, Some((*last).to_string())))
    }

    /// The path itself (a final symlink not followed).
    pub fn resolve_nofollow(&self, path: &str) -> Result<PathBuf, AgentError> {
        let (dir, name) = self.parent_of(path, false)?;
        Ok(match name {
            Some(n) => dir.join(n),
            None => dir,
        })
    }

    /// The path with a final symlink followed (and checked).
    pub fn resolve_follow(&self, path: &str) -> Result<PathBuf, AgentError> {
        let p = self.resolve_nofollow(path)?;
        match fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => self.follow(path, &p),
            _ => Ok(p),
        }
    }

    /// A directory to run a command in.
    pub fn resolve_dir(&self, path: &str) -> Result<PathBuf, AgentError> {
        let p = self.resolve_follow(path).map_err(|e| match e.kind {
            ErrorKind::OutsideWorkspace => e,
            _ => AgentError::new(
                ErrorKind::SpawnFailed,
                format!("working directory '{path}': {}", e.message),
            ),
        })?;
        match fs::metadata(&p) {
            Ok(md) if md.is_dir() => Ok(p),
            Ok(_) => Err(AgentError::new(
                ErrorKind::SpawnFailed,
                format!("working directory '{path}' is not a directory"),
            )),
            Err(e) => Err(AgentError::new(
                ErrorKind::SpawnFailed,
                format!("working directory '{path}': {e}"),
            )),
        }
    }

    pub fn read_file(&self, path: &str) -> Result<(Vec<u8>, u32), AgentError> {
        let p = self.resolve_follow(path)?;
        let md = fs::symlink_metadata(&p).map_err(|e| io_error(path, &e))?;
        let ft = md.file_type();
        if ft.is_dir() {
            return Err(AgentError::new(
                ErrorKind::IsDirectory,
                format!("'{path}' is a directory, not a file"),
            ));
        }
        if !ft.is_file() {
            return Err(AgentError::new(
                ErrorKind::NotRegularFile,
                format!(
                    "'{path}' is {}, not a regular file; only regular files can be read",
                    describe_other(ft)
                ),
            ));
        }
        if md.len() > (safe_coder_vm_protocol::MAX_FRAME_BYTES - 4096) as u64 {
            return Err(AgentError::new(
                ErrorKind::Io,
                format!(
                    "'{path}' is {} bytes, too large to send in one piece",
                    md.len()
                ),
            ));
        }
        // O_NOFOLLOW | O_NONBLOCK: a file swapped for a link or a FIFO since the check
        // fails instead of leading elsewhere or blocking.
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
            .map_err(|e| io_error(path, &e))?;
        let mut data = Vec::with_capacity(md.len() as usize);
        f.read_to_end(&mut data).map_err(|e| io_error(path, &e))?;
        Ok((data, md.mode() & 0o7777))
    }

    pub fn write_file(&self, path: &str, data: &[u8], mode: Option<u32>) -> Result<(), AgentError> {
        let (dir, name) = self.parent_of(path, true)?;
        let Some(name) = name else {
            return Err(AgentError::new(
                ErrorKind::IsDirectory,
                "the workspace root is a directory, not a file",
            ));
        };
        let mut target = dir.join(&name);
        // A final symlink inside the workspace is written through, as a shell would.
        if let Ok(md) = fs::symlink_metadata(&target) {
            if md.file_type().is_symlink() {
                target = match self.follow(path, &target) {
                    Ok(t) => t,
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Err(AgentError::new(
                            ErrorKind::NotFound,
                            format!("'{path}' is a symlink to nothing"),
                        ))
                    }
                    Err(e) => return Err(e),
                };
            }
        }
        let existing = fs::symlink_metadata(&target).ok();
        if let Some(md) = &existing {
            if md.is_dir() {
                return Err(AgentError::new(
                    ErrorKind::IsDirectory,
                    format!("'{path}' is a directory, not a file"),
                ));
            }
        }
        let mode = mode
            .or(existing.map(|md| md.mode() & 0o7777))
            .unwrap_or(0o644);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        // Unique per write: two writes of one file at once must not share a temp file.
        static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
        let tmp = parent.join(format!(
            ".{}.sc-tmp-{}-{}",
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            drop(f);
            fs::rename(&tmp, &target)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(path, &e));
        }
        Ok(())
    }

    pub fn stat(&self, path: &str) -> Result<Option<FileStat>, AgentError> {
        let p = match self.resolve_nofollow(path) {
            Ok(p) => p,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match fs::symlink_metadata(&p) {
            Ok(md) => Ok(Some(stat_of(&p, &md))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(path, &e)),
        }
    }

    pub fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, AgentError> {
        let p = self.resolve_follow(path)?;
        let rd = fs::read_dir(&p).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
                AgentError::new(ErrorKind::Io, format!("'{path}' is not a directory"))
            } else {
                io_error(path, &e)
            }
        })?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_error(path, &e))?;
            let Ok(md) = entry.metadata() else { continue };
            out.push(DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                kind: kind_of(md.file_type()),
                size: md.len(),
                mode: md.mode() & 0o7777,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn remove(&self, path: &str) -> Result<(), AgentError> {
        let p = match self.resolve_nofollow(path) {
            Ok(p) => p,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if p == self.root {
            return Err(AgentError::new(
                ErrorKind::InvalidRequest,
                "the workspace root itself cannot be removed",
            ));
        }
        let result = match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(path, &e)),
        }
    }
}
