//! The one executable lookup on `PATH`, for everything that needs to know whether a
//! program is installed before running it (git for history, bwrap and the VM and
//! container tools for the backends).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The search path used when `PATH` is not set: what `execvp` falls back to, so a
/// program found here is also the one a later spawn by bare name starts.
const DEFAULT_PATH: &str = "/usr/bin:/bin";

/// The first executable regular file called `name` in the directories of `PATH`, or
/// `None`. A lookup, not a run: it costs a few `stat` calls, which matters on the way
/// to the first prompt. A `name` containing `/` is checked as given.
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    find_executable_in(name, &path)
}

/// [`find_executable`] over an explicit search path (`PATH` syntax).
pub fn find_executable_in(name: &str, search_path: &std::ffi::OsStr) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable_file(&p).then_some(p);
    }
    std::env::split_paths(search_path)
        // An empty entry means the current directory to a shell; never look there.
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn first_executable_file_on_the_path_wins() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        file(a.path(), "tool", 0o644); // not executable: skipped
        let wanted = file(b.path(), "tool", 0o755);
        std::fs::create_dir(a.path().join("dir")).unwrap(); // a directory: skipped
        let search = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(find_executable_in("tool", &search), Some(wanted));
        assert_eq!(find_executable_in("dir", &search), None);
        assert_eq!(find_executable_in("absent", &search), None);
        assert_eq!(find_executable_in("", &search), None);
    }

    #[test]
    fn a_name_with_a_slash_is_checked_as_given() {
        let a = tempfile::tempdir().unwrap();
        let p = file(a.path(), "run", 0o755);
        let name = p.to_str().unwrap();
        assert_eq!(find_executable_in(name, OsStr::new("")), Some(p.clone()));
        assert_eq!(
            find_executable_in(&format!("{name}-missing"), OsStr::new("")),
            None
        );
    }

    #[test]
    fn finds_sh_on_this_machines_path() {
        // Every machine that runs these tests has a POSIX shell on PATH.
        let sh = find_executable("sh").expect("sh on PATH");
        assert!(sh.ends_with("sh"));
    }
}
