//! Staging the work tree into an index, in a way that cannot wedge the session.
//!
//! `git add -A` stops at the first path it cannot take: a nested repository without a
//! commit (`git init sub`, `cargo new x`), a name git refuses (`.GIT`, `.git.`), and
//! from then on every commit, diff and sync of the session fails. It also hashes any
//! file, however large. So staging is done in three steps that each always finish:
//!
//! 1. git lists what may have changed (`ls-files --others --modified`, which trusts its
//!    stat cache): untracked files, modified and deleted tracked files, and each nested
//!    repository as one `dir/` entry;
//! 2. each path is judged here: a nested repository's files are listed as plain files
//!    (its own `.git` is left out), a name that reads as `.git` or is not UTF-8 is left
//!    out, a file over the size limit is left out (its last stored version stays);
//! 3. `git update-index` takes the rest, streaming large files (see
//!    `core.bigFileThreshold` in `git.rs`).
//!
//! What was left out is returned as [`LeftOutPath`]s: the change set lists them, and the
//! commit reports the new ones once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use safe_coder_protocol::LeftOutPath;

use crate::error::HistoryError;
use crate::git::Git;
use crate::paths::unstorable_name;

/// The reason given for a nested repository's git directory.
pub(crate) const NESTED_REPO_REASON: &str =
    "a nested repository's git directory: left out, its files are kept as plain files";

/// Stages the work tree of `git` into its index (the main one or a scratch one).
/// `nested_repos_as_files`: whether a nested repository's files are tracked as plain
/// files (a sandbox copy) or the nested repository is left alone (the shadow repository
/// of the `direct` backend, whose project may hold the user's own submodules).
pub(crate) fn stage(
    git: &Git<'_>,
    max_file_bytes: u64,
    nested_repos_as_files: bool,
) -> Result<Vec<LeftOutPath>, HistoryError> {
    // Refresh the stat cache first, so files that were only touched are not re-read
    // by every later scan. Its exit code only says that some files differ.
    git.run_status(&["update-index", "-q", "--refresh", "--unmerged"], None)?;
    let listed = git.run(&[
        "ls-files",
        "-z",
        "--others",
        "--modified",
        "--exclude-standard",
    ])?;
    let mut candidates: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut nested: Vec<Vec<u8>> = Vec::new();
    for p in listed.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        if let Some(dir) = p.strip_suffix(b"/") {
            nested.push(dir.to_vec());
        } else {
            candidates.insert(p.to_vec());
        }
    }

    let mut left: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for dir in nested {
        left.insert(
            [dir.as_slice(), b"/.git"].concat(),
            if nested_repos_as_files {
                NESTED_REPO_REASON.to_string()
            } else {
                "a nested repository: not tracked by the session history".to_string()
            },
        );
        if nested_repos_as_files {
            let files = nested_files(git.work_tree, &dir, &mut left)?;
            candidates.extend(not_ignored(git, files)?);
        }
    }

    let mut add: Vec<&[u8]> = Vec::new();
    let mut remove: Vec<&[u8]> = Vec::new();
    let mut dir_ok: HashMap<Vec<u8>, bool> = HashMap::new();
    'paths: for p in &candidates {
        // A name git cannot hold: leave out the first such component (once).
        let mut start = 0;
        for part in p.split(|&b| b == b'/') {
            let end = start + part.len();
            if let Some(why) = unstorable_name(part) {
                left.entry(p[..end].to_vec())
                    .or_insert_with(|| why.to_string());
                continue 'paths;
            }
            start = end + 1;
        }
        // A path whose directory is gone or became a file or a symlink: only a removal.
        if !ancestors_are_dirs(git.work_tree, p, &mut dir_ok) {
            remove.push(p);
            continue;
        }
        let abs = git
            .work_tree
            .join(Path::new(std::ffi::OsStr::from_bytes(p)));
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_symlink() => add.push(p),
            Ok(m) if m.is_file() => {
                if m.len() > max_file_bytes {
                    left.insert(
                        p.clone(),
                        format!(
                            "{} is over the limit of {} per file; its last stored version is kept",
                            human_bytes(m.len()),
                            human_bytes(max_file_bytes)
                        ),
                    );
                } else {
                    add.push(p);
                }
            }
            // A directory where a tracked file was (its files are listed on their own),
            // a FIFO, a socket, or nothing at all.
            _ => remove.push(p),
        }
    }
    if !remove.is_empty() {
        git.run_with_input(
            &["update-index", "--force-remove", "-z", "--stdin"],
            Some(&nul_list(&remove)),
        )?;
    }
    if !add.is_empty() {
        git.run_with_input(
            &["update-index", "--add", "--replace", "-z", "--stdin"],
            Some(&nul_list(&add)),
        )?;
    }
    Ok(left
        .into_iter()
        .map(|(path, reason)| LeftOutPath {
            path: String::from_utf8_lossy(&path).into_owned(),
            reason,
        })
        .collect())
}

fn nul_list(paths: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(paths.iter().map(|p| p.len() + 1).sum());
    for p in paths {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
}

/// Whether every directory above `rel` is a real directory (not a symlink, not gone).
fn ancestors_are_dirs(root: &Path, rel: &[u8], cache: &mut HashMap<Vec<u8>, bool>) -> bool {
    let mut end = 0;
    while let Some(off) = rel[end..].iter().position(|&b| b == b'/') {
        end += off;
        let dir = &rel[..end];
        let ok = match cache.get(dir) {
            Some(&ok) => ok,
            None => {
                let ok =
                    fs::symlink_metadata(root.join(Path::new(std::ffi::OsStr::from_bytes(dir))))
                        .map(|m| m.is_dir())
                        .unwrap_or(false);
                cache.insert(dir.to_vec(), ok);
                ok
            }
        };
        if !ok {
            return false;
        }
        end += 1;
    }
    true
}

/// The regular files and symlinks under the nested repository `dir`, as plain files:
/// every `.git` entry below it (deeper nested repositories included) is left out and
/// recorded in `left`.
fn nested_files(
    root: &Path,
    dir: &[u8],
    left: &mut BTreeMap<Vec<u8>, String>,
) -> Result<Vec<Vec<u8>>, HistoryError> {
    let base = root.join(Path::new(std::ffi::OsStr::from_bytes(dir)));
    let mut files = Vec::new();
    let mut it = walkdir::WalkDir::new(&base)
        .follow_links(false)
        .min_depth(1)
        .into_iter();
    while let Some(entry) = it.next() {
        let Ok(entry) = entry else {
            // Unreadable corners are skipped like git skips them.
            continue;
        };
        let rel: PathBuf = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .to_path_buf();
        let rel = rel.as_os_str().as_bytes().to_vec();
        if entry.file_name() == ".git" {
            if entry.depth() > 1 {
                left.insert(rel, NESTED_REPO_REASON.to_string());
            }
            if entry.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let ft = entry.file_type();
        if ft.is_file() || ft.is_symlink() {
            files.push(rel);
        }
    }
    Ok(files)
}

/// `files` without those the project's ignore rules (`.gitignore` files, the
/// `[isolation] exclude` globs) exclude.
fn not_ignored(git: &Git<'_>, files: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, HistoryError> {
    if files.is_empty() {
        return Ok(files);
    }
    // Without literal pathspecs (see `git.rs`), a leading `:` would read as magic and
    // fail the whole list: such names are simply not checked.
    let refs: Vec<&[u8]> = files
        .iter()
        .map(Vec::as_slice)
        .filter(|f| !f.starts_with(b":"))
        .collect();
    let (_, out, _) = git.run_status(
        &["check-ignore", "--no-index", "-z", "--stdin"],
        Some(&nul_list(&refs)),
    )?;
    let ignored: BTreeSet<&[u8]> = out.split(|&b| b == 0).filter(|p| !p.is_empty()).collect();
    Ok(files
        .into_iter()
        .filter(|f| !ignored.contains(f.as_slice()))
        .collect())
}

/// `1.5 GiB`, `100 MiB`, `12 KiB`, `300 bytes`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenth = (n % size) * 10 / size;
            return if tenth == 0 || whole >= 100 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenth} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(100 << 20), "100 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
