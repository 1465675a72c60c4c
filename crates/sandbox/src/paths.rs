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

/// Why a path typed by the model or the user is refused before it reaches a sandbox.
/// Each message names the fix; callers show it as is (tools to the model, `@path` notes
/// to the user).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty; give a file path relative to the project root")]
    Empty,
    #[error("the path '{0}' contains a NUL byte; give a file path relative to the project root")]
    NulByte(String),
    #[error(
        "'{path}' points into a home directory, which is outside the project root ({root}); \
         use a path relative to the project root"
    )]
    HomeDirectory { path: String, root: String },
    #[error(
        "the absolute path '{path}' is outside the project root ({root}); \
         use a path relative to the project root"
    )]
    OutsideRoot { path: String, root: String },
    #[error("the path '{0}' leaves the project root through '..'; use a path inside the project")]
    LeavesRoot(String),
}

/// The one lexical path rule, shared by the tools and by `@path`
/// references: turns `path` into a project-relative path with `/` separators (`"."` for
/// the root itself).
///
/// - surrounding whitespace is dropped (models often add some);
/// - an absolute path is accepted when it lies under `agent_root`;
/// - `~` and `~/…` are refused (nothing expands them, and the user means a home directory);
/// - `.` and empty components are dropped; a `..` is allowed while it stays inside the
///   root (`src/../a.rs` is `a.rs`), and refused once it would climb above it.
///
/// This is lexical only: symlinks are the sandbox's business ([`resolve_in_root`] on the
/// host backends), so a path that passes here can still be refused there.
pub fn normalize_in_root(agent_root: &str, path: &str) -> Result<String, PathError> {
    let trimmed = path.trim();
    if trimmed.is_empty() {
        return Err(PathError::Empty);
    }
    if trimmed.contains('\0') {
        return Err(PathError::NulByte(trimmed.to_string()));
    }
    if trimmed == "~" || trimmed.starts_with("~/") {
        return Err(PathError::HomeDirectory {
            path: trimmed.to_string(),
            root: agent_root.to_string(),
        });
    }
    let rest = if trimmed.starts_with('/') {
        let root = agent_root.trim_end_matches('/');
        if trimmed == root || (root.is_empty() && trimmed == "/") {
            ""
        } else if let Some(rest) = trimmed.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
            rest
        } else {
            return Err(PathError::OutsideRoot {
                path: trimmed.to_string(),
                root: agent_root.to_string(),
            });
        }
    } else {
        trimmed
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::LeavesRoot(trimmed.to_string()));
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        Ok(".".into())
    } else {
        Ok(parts.join("/"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_paths_become_project_relative() {
        assert_eq!(normalize_in_root("/p", "src/a.rs").unwrap(), "src/a.rs");
        assert_eq!(normalize_in_root("/p", "  src/a.rs\n").unwrap(), "src/a.rs");
        assert_eq!(normalize_in_root("/p", "./src//a.rs").unwrap(), "src/a.rs");
        assert_eq!(normalize_in_root("/p/", "/p/src/a.rs").unwrap(), "src/a.rs");
        assert_eq!(normalize_in_root("/p", "/p").unwrap(), ".");
        assert_eq!(normalize_in_root("/p", "/p/").unwrap(), ".");
        assert_eq!(normalize_in_root("/p", ".").unwrap(), ".");
        assert_eq!(normalize_in_root("/", "/etc/x").unwrap(), "etc/x");
        // Glob characters and a name that merely starts with `~` are ordinary text.
        assert_eq!(
            normalize_in_root("/p", "src/**/*.rs").unwrap(),
            "src/**/*.rs"
        );
        assert_eq!(normalize_in_root("/p", "~backup").unwrap(), "~backup");
    }

    #[test]
    fn a_dot_dot_may_not_climb_above_the_root() {
        assert_eq!(normalize_in_root("/p", "src/../a.rs").unwrap(), "a.rs");
        assert_eq!(normalize_in_root("/p", "a/b/../../c").unwrap(), "c");
        assert_eq!(normalize_in_root("/p", "a/..").unwrap(), ".");
        assert_eq!(normalize_in_root("/p", "/p/a/../b").unwrap(), "b");
        for climbing in ["..", "../x", "a/../../x", "/p/../x", "./../p/x"] {
            assert_eq!(
                normalize_in_root("/p", climbing),
                Err(PathError::LeavesRoot(climbing.to_string())),
                "{climbing}"
            );
        }
    }

    #[test]
    fn outside_home_empty_and_nul_are_refused_with_the_fix() {
        let outside = normalize_in_root("/p", "/etc/passwd").unwrap_err();
        assert_eq!(
            outside.to_string(),
            "the absolute path '/etc/passwd' is outside the project root (/p); use a path \
             relative to the project root"
        );
        // A sibling whose name starts with the root's name is not inside it.
        assert!(matches!(
            normalize_in_root("/p", "/pp/x"),
            Err(PathError::OutsideRoot { .. })
        ));
        assert!(matches!(
            normalize_in_root("/p", "~/x"),
            Err(PathError::HomeDirectory { .. })
        ));
        assert!(matches!(
            normalize_in_root("/p", "~"),
            Err(PathError::HomeDirectory { .. })
        ));
        assert_eq!(normalize_in_root("/p", "  "), Err(PathError::Empty));
        assert!(matches!(
            normalize_in_root("/p", "a\0b"),
            Err(PathError::NulByte(_))
        ));
    }
}
