//! Staging the work tree into an index, in a way that cannot wedge the session.
//!
//! `git add -A` stops at the first path it cannot take: a nested repository without a
//! commit (`git init sub`, `cargo new x`), a name git refuses (`.GIT`, `.git.`), and
//! from then on every commit, diff and sync of the session fails. It also hashes any
//! file, however large. So staging is done in three steps that each always finish:
//!
//! 1. git lists what may have changed (`ls-files --others --modified`, which trusts its
//!    stat cache; a file whose stat changed but content did not is compared again by
//!    each scan until it is next recorded): untracked files, modified and deleted tracked files, and each nested
//!    repository as one `dir/` entry;
//! 2. each path is judged here: a nested repository's files are listed as plain files
//!    (its own `.git` is left out), a name that reads as `.git` or is not UTF-8 is left
//!    out, a file over the size limit is left out (its last stored version stays);
//! 3. each remaining file is read through a descriptor opened without following any
//!    symlink, streamed into a loose object, and `git update-index --index-info` records
//!    it (git itself never reads the agent's files for a commit).
//!
//! What was left out is returned as [`LeftOutPath`]s: the change set lists them, and the
//! commit reports the new ones once.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use safe_coder_protocol::LeftOutPath;

use crate::beneath::{open_beneath, Opened};
use crate::error::HistoryError;
use crate::git::Git;
use crate::objects;
use crate::paths::unstorable_name;

/// The reason given for a nested repository's git directory.
pub(crate) const NESTED_REPO_REASON: &str =
    "a nested repository's git directory: left out, its files are kept as plain files";

/// Above this many recorded files, or one file above this size, the stat data of the
/// recorded files is refreshed at once (see the end of [`stage`]).
const REFRESH_AFTER_FILES: usize = 32;
const REFRESH_AFTER_BYTES: u64 = 1 << 20;

/// Stages the work tree of `git` into its index (the main one or a scratch one).
/// `nested_repos_as_files`: whether a nested repository's files are tracked as plain
/// files (a sandbox copy) or the nested repository is left alone (the shadow repository
/// of the `direct` backend, whose project may hold the user's own submodules).
pub(crate) fn stage(
    git: &Git<'_>,
    max_file_bytes: u64,
    nested_repos_as_files: bool,
) -> Result<Vec<LeftOutPath>, HistoryError> {
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
            let files = nested_files(git.files, &dir, &mut left)?;
            candidates.extend(not_ignored(git, files)?);
        }
    }

    // Each file is read through a descriptor opened without following any symlink
    // (see `beneath.rs`) and stored as what was read: a process the agent left running
    // cannot swap in a link to a host secret between a check and git's read.
    let mut info: Vec<u8> = Vec::new();
    let mut removed: Vec<&[u8]> = Vec::new();
    let mut added: Vec<(u32, String, &[u8])> = Vec::new();
    let mut large_added = false;
    for p in &candidates {
        if let Some(why) = unstorable_path(p) {
            left.entry(why.0).or_insert_with(|| why.1.to_string());
            continue;
        }
        match open_beneath(git.files, p).map_err(|e| io_err(p, e))? {
            Opened::Link(target) => {
                let id = objects::write_loose(git.git_dir, "blob", &target)?;
                added.push((0o120000, id, p));
            }
            Opened::File(file) => {
                let meta = file.metadata().map_err(|e| io_err(p, e))?;
                if meta.len() > max_file_bytes {
                    left.insert(
                        p.clone(),
                        format!(
                            "{} is over the limit of {} per file; its last stored version is kept",
                            human_bytes(meta.len()),
                            human_bytes(max_file_bytes)
                        ),
                    );
                    continue;
                }
                let mode = if meta.permissions().mode() & 0o100 != 0 {
                    0o100755
                } else {
                    0o100644
                };
                large_added |= meta.len() > REFRESH_AFTER_BYTES;
                match objects::write_loose_blob_stream(git.git_dir, meta.len(), file) {
                    Ok(id) => added.push((mode, id, p)),
                    // Still being written: the next scan takes it.
                    Err(HistoryError::ChangedDuringCopy { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Opened::Unreadable => {
                left.insert(
                    p.clone(),
                    "it may not be read (its permissions deny it); its last stored version is kept"
                        .to_string(),
                );
            }
            // A directory where a tracked file was (its files are listed on their own),
            // a FIFO, a socket, or nothing at all.
            Opened::Other | Opened::Gone => removed.push(p),
        }
    }
    // Removals first, so a file that became a directory makes room for its files.
    for p in &removed {
        info.extend_from_slice(b"0 0000000000000000000000000000000000000000\t");
        info.extend_from_slice(p);
        info.push(0);
    }
    for (mode, id, p) in &added {
        info.extend_from_slice(format!("{mode:o} {id}\t").as_bytes());
        info.extend_from_slice(p);
        info.push(0);
    }
    if !info.is_empty() {
        git.run_with_input(
            &["update-index", "--add", "--replace", "-z", "--index-info"],
            Some(&info),
        )?;
        // `--index-info` records no stat data, so later scans compare those files'
        // content again until they are refreshed. That is cheap for a few small files
        // and not worth another pass over the index; for many files or a large one, fill
        // the stat data in for just these paths (git only compares, it stores nothing).
        let files: Vec<&[u8]> = added
            .iter()
            .filter(|(mode, _, _)| *mode != 0o120000)
            .map(|(_, _, p)| *p)
            .collect();
        if files.len() > REFRESH_AFTER_FILES || large_added {
            git.run_with_input(
                &[
                    "add",
                    "--refresh",
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                ],
                Some(&nul_list(&files)),
            )?;
        }
    }
    Ok(left
        .into_iter()
        .map(|(path, reason)| LeftOutPath {
            path: String::from_utf8_lossy(&path).into_owned(),
            reason,
        })
        .collect())
}

fn io_err(p: &[u8], e: std::io::Error) -> HistoryError {
    HistoryError::io(format!("cannot read {}", String::from_utf8_lossy(p)), e)
}

/// The first component of `p` git cannot hold (as a path prefix), with the reason.
fn unstorable_path(p: &[u8]) -> Option<(Vec<u8>, &'static str)> {
    let mut start = 0;
    for part in p.split(|&b| b == b'/') {
        let end = start + part.len();
        if let Some(why) = unstorable_name(part) {
            return Some((p[..end].to_vec(), why));
        }
        start = end + 1;
    }
    None
}

fn nul_list(paths: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(paths.iter().map(|p| p.len() + 1).sum());
    for p in paths {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
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
pub(crate) fn not_ignored(
    git: &Git<'_>,
    files: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, HistoryError> {
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
