//! Change detection from an overlay workspace's upper layer: what the session changed is
//! exactly what the upper directory holds, so a commit or a change set costs what
//! changed, not what the project weighs (no scan of the project).
//!
//! The tree of the session's work is the base snapshot's tree with the upper layer
//! applied:
//! - a regular file or a symlink: that path's new content (a mode change copies the
//!   file up, so it is here too);
//! - a whiteout (a character device 0/0): the path is deleted (a file or a whole
//!   directory);
//! - an opaque directory (`user.overlay.opaque` = `y`): nothing of the base's directory
//!   shows through; its content is what the upper directory holds;
//! - any other directory: merged with the base's.
//!
//! New files are kept only when git does not ignore them (the project's `.gitignore`
//! files and `[isolation] exclude`), as a full scan does. Anything unusual — a name
//! git cannot hold, a `.git` directory, a large file, a huge upper layer — makes the
//! caller fall back to the full scan through git, which judges and reports it.
//!
//! The base is what the project was when the session began; a file the user edits in
//! the project during the session is not the session's change (it is not in the upper
//! layer), although the agent sees the edit.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::beneath::{open_beneath, Opened};
use crate::error::{HistoryError, IoContext};
use crate::objects::{self, Oid};
use crate::paths::unstorable_name;

/// An upper layer with more entries than this is left to the full scan (an agent's
/// build output; git's walk skips ignored directories where this one would not).
const MAX_ENTRIES: usize = 5_000;
/// Larger files go to the full scan, which streams them.
pub(crate) const MAX_BYTES: u64 = 8 << 20;

/// One path of the upper layer.
#[derive(Debug)]
pub(crate) enum Item {
    /// Deleted (a whiteout), or an opaque directory's base content hidden.
    Gone,
    File,
    Link,
}

/// The upper layer's entries, relative paths in walk order (a directory's own entry
/// before its content); `None` when the full scan must judge (see the module docs).
pub(crate) fn walk(
    upper: &Path,
    max_file_bytes: u64,
) -> Result<Option<Vec<(String, Item)>>, HistoryError> {
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let host = if dir.is_empty() {
            upper.to_path_buf()
        } else {
            upper.join(&dir)
        };
        let rd = match fs::read_dir(&host) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_empty() => {
                return Ok(Some(out))
            }
            Err(e) => {
                return Err(HistoryError::io(
                    format!("cannot read {}", host.display()),
                    e,
                ))
            }
        };
        for entry in rd {
            let entry = entry.ctx(|| format!("cannot read {}", host.display()))?;
            if out.len() >= MAX_ENTRIES {
                return Ok(None);
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Ok(None);
            };
            let rel = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            let meta = fs::symlink_metadata(entry.path())
                .ctx(|| format!("cannot stat {}", entry.path().display()))?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                out.push((rel, Item::Gone));
                continue;
            }
            if name == ".git" || unstorable_name(name.as_bytes()).is_some() {
                return Ok(None);
            }
            if ft.is_dir() {
                if is_opaque(&entry.path()) {
                    out.push((rel.clone(), Item::Gone));
                }
                dirs.push(rel);
            } else if ft.is_symlink() {
                out.push((rel, Item::Link));
            } else if ft.is_file() {
                if meta.len() > MAX_BYTES.min(max_file_bytes) {
                    return Ok(None);
                }
                out.push((rel, Item::File));
            }
            // FIFOs, sockets and devices are not tracked, as in a full scan.
        }
    }
    Ok(Some(out))
}

/// Whether overlayfs marked this upper directory opaque (mounted with `userxattr`, so
/// `user.overlay.opaque`; `trusted.` where a privileged mount made it).
fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    for name in [c"user.overlay.opaque", c"trusted.overlay.opaque"] {
        let mut v = [0u8; 4];
        // SAFETY: valid C strings and a buffer of the given length.
        let n =
            unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if n == 1 && v[0] == b'y' {
            return true;
        }
    }
    false
}

/// Reads an upper-layer file or link (never following a link) into a loose blob.
/// `None` when it vanished or changed kind meanwhile (the full scan judges).
pub(crate) fn store(
    git_dir: &Path,
    upper: &Path,
    rel: &str,
) -> Result<Option<(u32, Oid)>, HistoryError> {
    let opened = open_beneath(upper, rel.as_bytes())
        .ctx(|| format!("cannot open {}", upper.join(rel).display()))?;
    let (mode, data) = match opened {
        Opened::Link(target) => (0o120000, target),
        Opened::File(file) => {
            let meta = file
                .metadata()
                .ctx(|| format!("cannot stat {}", upper.join(rel).display()))?;
            if meta.len() > MAX_BYTES {
                return Ok(None);
            }
            let mut data = Vec::with_capacity(meta.len() as usize);
            file.take(MAX_BYTES + 1)
                .read_to_end(&mut data)
                .ctx(|| format!("cannot read {}", upper.join(rel).display()))?;
            let mode = if meta.permissions().mode() & 0o100 != 0 {
                0o100755
            } else {
                0o100644
            };
            (mode, data)
        }
        _ => return Ok(None),
    };
    let id = objects::write_loose(git_dir, "blob", &data)?;
    Ok(objects::parse_hex(&id).map(|id| (mode, id)))
}

/// A tree's entries: (mode, name, id).
type Entries = Vec<(u32, Vec<u8>, Oid)>;

/// Whether `rel` names an entry of the tree `root` (read from the session's own
/// objects; trees are never borrowed). Caches the trees it reads.
pub(crate) struct TreeLookup<'a> {
    git_dir: &'a Path,
    root: Oid,
    cache: HashMap<String, Option<Entries>>,
}

impl<'a> TreeLookup<'a> {
    pub(crate) fn new(git_dir: &'a Path, root: Oid) -> Self {
        TreeLookup {
            git_dir,
            root,
            cache: HashMap::new(),
        }
    }

    fn entries(&mut self, dir: &str) -> Result<Option<Entries>, HistoryError> {
        if let Some(e) = self.cache.get(dir) {
            return Ok(e.clone());
        }
        let id = if dir.is_empty() {
            Some(self.root)
        } else {
            let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir));
            self.entries(parent)?.and_then(|es| {
                es.into_iter()
                    .find(|e| e.1 == name.as_bytes() && e.0 == 0o40000)
                    .map(|e| e.2)
            })
        };
        let entries = match id {
            Some(id) => match objects::read_object(self.git_dir, &objects::hex(&id))? {
                Some((kind, data)) if kind == "tree" => objects::parse_tree(&data),
                _ => None,
            },
            None => None,
        };
        self.cache.insert(dir.to_string(), entries.clone());
        Ok(entries)
    }

    /// Whether the tree holds `rel` (any kind of entry).
    pub(crate) fn has(&mut self, rel: &str) -> Result<bool, HistoryError> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok(self
            .entries(dir)?
            .is_some_and(|es| es.iter().any(|e| e.1 == name.as_bytes())))
    }
}

/// Creates a whiteout at `rel` in `upper` (hiding the lower layer's entry there), with
/// plain directories above it. Linux lets any user make a whiteout (5.8+).
pub(crate) fn hide(upper: &Path, rel: &Path) -> Result<(), HistoryError> {
    let path: PathBuf = upper.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).ctx(|| format!("cannot create {}", parent.display()))?;
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| HistoryError::BadPath(rel.display().to_string()))?;
    // SAFETY: a valid C string; mknod of a 0/0 character device (a whiteout).
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) } != 0 {
        return Err(HistoryError::io(
            format!("cannot hide {} from the overlay workspace", rel.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
