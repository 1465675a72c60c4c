//! What the `process` backend shows of the user's home: the toolchains installed there,
//! read-only, and nothing else (no `~/.cargo/credentials.toml`, no `~/.ssh`, no
//! `~/.npmrc`). Both mechanisms expose exactly this set: bubblewrap bind-mounts each
//! directory read-only, the in-process mechanism gives Landlock read rules for them.
//!
//! The set: the directories on `PATH` that live under `$HOME` (`~/.cargo/bin`,
//! `~/.local/bin`, pyenv's shims...), `~/.rustup` (which rustup's proxies need) and
//! `~/.pyenv`. Since `HOME` differs inside the sandbox, `RUSTUP_HOME` and `PYENV_ROOT`
//! are set to where those live (unless the user set them already).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The toolchain directories to show and the variables to set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Toolchains {
    pub dirs: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
}

/// The toolchains of this process's user (from `HOME` and `PATH`).
pub(crate) fn of_this_user() -> Toolchains {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Toolchains::default();
    };
    find(&home, std::env::var_os("PATH").as_deref(), |var| {
        std::env::var_os(var).is_some()
    })
}

/// The toolchains under `home` given `path` (the `PATH` value); `is_set` says whether a
/// variable is already set (then it is not overridden).
pub(crate) fn find(home: &Path, path: Option<&OsStr>, is_set: impl Fn(&str) -> bool) -> Toolchains {
    // A home of `/` (some service accounts) would expose everything.
    if home == Path::new("/") || !home.is_absolute() {
        return Toolchains::default();
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut env = Vec::new();
    for (dir, var) in [(".rustup", "RUSTUP_HOME"), (".pyenv", "PYENV_ROOT")] {
        let p = home.join(dir);
        if p.is_dir() {
            if !is_set(var) {
                env.push((var.to_string(), p.display().to_string()));
            }
            candidates.push(p);
        }
    }
    if let Some(path) = path {
        for entry in std::env::split_paths(path) {
            if entry.starts_with(home) && entry != home && entry.is_dir() {
                candidates.push(entry);
            }
        }
    }
    // Drop directories inside another one of the set, and duplicates.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for c in &candidates {
        let covered = candidates.iter().any(|o| o != c && c.starts_with(o));
        if !covered && !dirs.contains(c) {
            dirs.push(c.clone());
        }
    }
    Toolchains { dirs, env }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_path_entries_under_home_and_the_toolchain_roots_only() {
        let home = tempfile::tempdir().expect("tempdir");
        let h = home.path();
        for d in [
            ".cargo/bin",
            ".rustup/toolchains",
            ".pyenv/shims",
            ".local/bin",
            ".ssh",
        ] {
            std::fs::create_dir_all(h.join(d)).expect("mkdir");
        }
        let path = std::env::join_paths([
            h.join(".cargo/bin"),
            h.join(".pyenv/shims"),
            h.join(".local/bin"),
            h.to_path_buf(),
            h.join("missing/bin"),
            PathBuf::from("/usr/bin"),
        ])
        .expect("join");
        let t = find(h, Some(&path), |v| v == "PYENV_ROOT");
        let mut dirs = t.dirs.clone();
        dirs.sort();
        let mut want = vec![
            h.join(".cargo/bin"),
            h.join(".local/bin"),
            h.join(".pyenv"),
            h.join(".rustup"),
        ];
        want.sort();
        assert_eq!(dirs, want);
        assert_eq!(
            t.env,
            vec![(
                "RUSTUP_HOME".to_string(),
                h.join(".rustup").display().to_string()
            )]
        );
        assert_eq!(
            find(Path::new("/"), Some(&path), |_| false),
            Toolchains::default()
        );
    }
}
