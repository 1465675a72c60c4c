//! Resolving agent paths inside a host directory without ever leaving it.
//!
//! [`resolve_in_root`] walks the path one component at a time the way the kernel does,
//! following every symlink it meets (also a dangling one, and also the last component),
//! so the result is the real location a read or write would reach. Anything that lands
//! outside the root is refused. Components that do not exist yet are kept as they are,
//! so the same check works for files about to be created.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::SandboxError;

/// The most symlinks followed while resolving one path (Linux's own limit is 40).
const MAX_SYMLINKS: usize = 40;

/// Resolves `rel` (relative to `root`, or absolute under it) to the real host path it
/// names, refusing anything that resolves outside `root` through `..` or a symlink. The
/// file need not exist (for writes); a dangling symlink is followed to where it points.
pub fn resolve_in_root(root: &Path, rel: &str) -> Result<PathBuf, SandboxError> {
    let root = std::fs::canonicalize(root).map_err(|source| SandboxError::Io {
        path: root.display().to_string(),
        source,
    })?;
    resolve_in_canonical_root(&root, rel)
}

/// [`resolve_in_root`] for a root that is already canonical (saves a `realpath`).
pub(crate) fn resolve_in_canonical_root(root: &Path, rel: &str) -> Result<PathBuf, SandboxError> {
    let outside = || SandboxError::OutsideRoot(rel.to_string());
    let rel_path = Path::new(rel);
    let rel_path = if rel_path.is_absolute() {
        rel_path.strip_prefix(root).map_err(|_| outside())?
    } else {
        rel_path
    };

    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, rel_path);
    let mut out = root.to_path_buf();
    let mut followed = 0usize;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            out.pop();
            continue;
        }
        let candidate = out.join(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(SandboxError::Other(format!(
                        "too many levels of symbolic links while resolving '{rel}'"
                    )));
                }
                let target =
                    std::fs::read_link(&candidate).map_err(|source| io_err(rel, source))?;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => out = candidate,
            // Not there (yet): what follows cannot contain symlinks either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => out = candidate,
            // A file used as a directory: keep going, the caller's open reports it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => out = candidate,
            Err(source) => return Err(io_err(rel, source)),
        }
    }
    if out.starts_with(root) {
        Ok(out)
    } else {
        Err(outside())
    }
}

/// Puts the components of `path` at the front of `pending` (before what is already
/// there), dropping `.` and the root marker.
fn push_components(pending: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        pending.push_front(part);
    }
}

fn io_err(rel: &str, source: io::Error) -> SandboxError {
    SandboxError::Io {
        path: rel.to_string(),
        source,
    }
}
