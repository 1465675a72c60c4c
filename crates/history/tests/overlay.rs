#![allow(clippy::unwrap_used)]
//! A session over an overlay workspace: the project is the read-only lower layer, the
//! agent's writes land in the upper layer, and commits, change sets, diffs and sync are
//! computed from the upper layer. Every test checks the history against what the merged
//! tree really holds, so the upper-layer reading is proved equal to a full scan.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use safe_coder_history::{sync, SessionRepo};
use safe_coder_protocol::ChangeKind;
use safe_coder_sandbox::overlay::Layers;

fn required() -> bool {
    std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_some()
}

fn layers(tmp: &Path) -> Layers {
    Layers {
        lower: tmp.join("project"),
        upper: tmp.join("session/upper"),
        work: tmp.join("session/ovl-work"),
        merged: tmp.join("session/work"),
    }
}

/// Which workspace a test runs on: the overlay, or the copy it falls back to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ws {
    Overlay,
    Copy,
}

/// The project (a git repository with a dirty tree) and an overlay session over it;
/// `None` (after saying why) where overlays cannot be mounted and nothing requires it.
fn session(tmp: &Path, excludes: &[&str]) -> Option<SessionRepo> {
    session_on(Ws::Overlay, tmp, excludes)
}

fn session_on(ws: Ws, tmp: &Path, excludes: &[&str]) -> Option<SessionRepo> {
    let project = tmp.join("project");
    sample_project(&project);
    fs::remove_dir_all(project.join(".git")).unwrap();
    write(&project, ".gitignore", "*.log\nbuild/\n");
    let out = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ex: Vec<String> = excludes.iter().map(|s| s.to_string()).collect();
    if ws == Ws::Copy {
        return Some(
            SessionRepo::create_sandbox_copy_at(
                &project,
                &tmp.join("session/work"),
                Some(&tmp.join("session/history.git")),
                &ex,
            )
            .unwrap(),
        );
    }
    match SessionRepo::create_overlay(&layers(tmp), &tmp.join("session/history.git"), &ex) {
        Ok(repo) => Some(repo),
        Err(e) => {
            assert!(!required(), "the overlay workspace must work here: {e}");
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Runs a shell command in the merged tree, as the agent's `bash` would.
fn sh(repo: &SessionRepo, script: &str) {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    match repo.overlay() {
        Some(m) => m.enter(&mut cmd),
        None => {
            cmd.current_dir(repo.work_tree());
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files of a commit: path → (bytes, executable).
fn commit_files(repo: &SessionRepo, rev: &str) -> BTreeMap<String, (Vec<u8>, bool)> {
    let list = git(
        repo.git_dir(),
        Path::new("/"),
        &["ls-tree", "-r", "-z", "--full-tree", rev],
    );
    let mut map = BTreeMap::new();
    for rec in list.split('\0').filter(|r| !r.is_empty()) {
        let (meta, path) = rec.split_once('\t').unwrap();
        let f: Vec<&str> = meta.split(' ').collect();
        let out = Command::new("git")
            .args(["cat-file", "blob", f[2]])
            .env("GIT_DIR", repo.git_dir())
            .output()
            .unwrap();
        map.insert(path.to_string(), (out.stdout, f[0] == "100755"));
    }
    map
}

/// Files of the merged tree (what the agent sees), minus what git ignores here.
fn merged_files(repo: &SessionRepo, ignored: &[&str]) -> BTreeMap<String, (Vec<u8>, bool)> {
    tree_snapshot(repo.files())
        .into_iter()
        .filter(|(path, (_, mode))| {
            mode & 0o170000 != 0o040000 && !ignored.iter().any(|i| path.starts_with(i))
        })
        .map(|(path, (data, mode))| {
            let link = mode & 0o170000 == 0o120000;
            (path, (data, !link && mode & 0o100 != 0))
        })
        .collect()
}

#[test]
fn lifecycle_on_the_overlay_workspace() {
    lifecycle(Ws::Overlay);
}

#[test]
fn lifecycle_on_the_copy_fallback() {
    lifecycle(Ws::Copy);
}

fn lifecycle(ws: Ws) {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let Some(repo) = session_on(ws, tmp.path(), &["node_modules"]) else {
        return;
    };
    let project = tmp.path().join("project");
    let project_before = tree_snapshot(&project);
    let m = repo.files().to_path_buf();
    // What a copy would hold: no `.git`, no excluded directory.
    assert!(!m.join(".git").exists());
    assert!(!m.join("node_modules").exists());
    assert_eq!(read(&m, "src/main.rs"), read(&project, "src/main.rs"));
    assert_eq!(commit_files(&repo, "HEAD"), merged_files(&repo, &[]));

    // Writes through the tools, then a bash step: modify, add, delete, rename a
    // directory, change a mode, replace a directory by a file, ignored build output.
    write(&m, "src/main.rs", "fn main() { agent(); }\n");
    write(&m, "new/added.txt", "added\n");
    repo.commit_changes("Agent executed: write_file", Some(&["src/main.rs".into()]))
        .unwrap()
        .unwrap();
    sh(
        &repo,
        "rm dup1.txt && mv a renamed && chmod +x README.md && rm -r src && printf 'now a file\\n' > src \
         && mkdir -p build && echo out > build/x.o && echo log > more.log",
    );
    let c = repo.commit_changes("Agent executed: bash", None).unwrap();
    assert!(c.is_some());
    assert_eq!(
        commit_files(&repo, "HEAD"),
        merged_files(&repo, &["build", "more.log"])
    );
    // No change, no commit.
    assert_eq!(
        repo.commit_changes("Agent executed: bash", None).unwrap(),
        None
    );

    let changes = repo.change_set().unwrap();
    let kinds: BTreeMap<&str, ChangeKind> = changes
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.kind))
        .collect();
    assert_eq!(kinds["new/added.txt"], ChangeKind::Added);
    assert_eq!(kinds["dup1.txt"], ChangeKind::Deleted);
    assert_eq!(kinds["a/b/c/deep.txt"], ChangeKind::Deleted);
    assert_eq!(kinds["renamed/b/c/deep.txt"], ChangeKind::Added);
    assert_eq!(kinds["README.md"], ChangeKind::ModeChanged);
    assert_eq!(kinds["src/main.rs"], ChangeKind::Deleted);
    assert_eq!(kinds["src"], ChangeKind::Added);
    assert!(!kinds.contains_key("build/x.o") && !kinds.contains_key("more.log"));
    assert!(repo.diff(Some("src")).unwrap().contains("+now a file"));

    // The project is untouched until the sync; a host edit is a conflict.
    assert_eq!(tree_snapshot(&project), project_before);
    write(&project, "new/added.txt", "the user's\n");
    let report = sync::sync_back(&repo, &project, None).unwrap();
    assert_eq!(report.conflicts, ["new/added.txt"]);
    assert_eq!(read(&project, "new/added.txt"), "the user's\n");
    assert_eq!(read(&project, "src"), "now a file\n");
    assert!(!project.join("dup1.txt").exists());
    assert!(is_exec(&project, "README.md"));
    assert_eq!(read(&project, "renamed/b/c/deep.txt"), "deep\n");
    assert!(!project.join("build").exists());
    // The user's .git never moved.
    assert_eq!(
        tree_snapshot(&project.join(".git")),
        project_before
            .iter()
            .filter(|(k, _)| k.starts_with(".git/"))
            .map(|(k, v)| (k[5..].to_string(), v.clone()))
            .collect()
    );
}

#[test]
fn directories_replaced_by_files_and_back_and_rollback() {
    for ws in [Ws::Overlay, Ws::Copy] {
        dirs_and_files(ws);
    }
}

fn dirs_and_files(ws: Ws) {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let Some(repo) = session_on(ws, tmp.path(), &[]) else {
        return;
    };
    let base = repo.base().unwrap();
    sh(&repo, "rm -r a && echo file > a");
    repo.commit_changes("Agent executed: bash", None)
        .unwrap()
        .unwrap();
    assert_eq!(commit_files(&repo, "HEAD"), merged_files(&repo, &[]));
    sh(&repo, "rm a && mkdir -p a/b && echo again > a/b/new.txt");
    let back = repo
        .commit_changes("Agent executed: bash", None)
        .unwrap()
        .unwrap();
    assert_eq!(commit_files(&repo, "HEAD"), merged_files(&repo, &[]));
    assert!(!commit_files(&repo, "HEAD").contains_key("a/b/c/deep.txt"));

    // Rollback, undo and restore rewrite the merged tree (into the upper layer).
    repo.rollback(&base).unwrap();
    assert_eq!(read(repo.files(), "a/b/c/deep.txt"), "deep\n");
    assert!(!repo.files().join("a/b/new.txt").exists());
    assert!(repo.change_set().unwrap().files.is_empty());
    repo.rollback(&back).unwrap();
    assert_eq!(read(repo.files(), "a/b/new.txt"), "again\n");
    repo.restore(None).unwrap();
    assert!(repo.change_set().unwrap().files.is_empty());
    assert_eq!(commit_files(&repo, "HEAD"), commit_files(&repo, &base));
}

#[test]
fn a_killed_session_is_recovered_from_its_upper_layer() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let Some(repo) = session(tmp.path(), &[]) else {
        return;
    };
    let git_dir = repo.git_dir().to_path_buf();
    // Written, never committed: then the process is gone (its namespace with it).
    write(repo.files(), "src/lib.rs", "pub fn unsaved() {}\n");
    sh(&repo, "rm empty.txt && chmod 755 dup2.txt");
    drop(repo);
    let l = layers(tmp.path());
    assert_eq!(read(&l.upper, "src/lib.rs"), "pub fn unsaved() {}\n");
    assert_eq!(fs::read_dir(&l.merged).unwrap().count(), 0);

    let repo = SessionRepo::open_overlay(&l, &git_dir).unwrap();
    assert_eq!(read(repo.files(), "src/lib.rs"), "pub fn unsaved() {}\n");
    let changes = repo.change_set().unwrap();
    let paths: Vec<&str> = changes.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["dup2.txt", "empty.txt", "src/lib.rs"]);
    let project = tmp.path().join("project");
    let report = sync::sync_back(&repo, &project, None).unwrap();
    assert!(report.conflicts.is_empty(), "{report:?}");
    assert_eq!(read(&project, "src/lib.rs"), "pub fn unsaved() {}\n");
    assert!(!project.join("empty.txt").exists());
    assert!(
        fs::metadata(project.join("dup2.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o100
            != 0
    );
}

#[test]
fn the_first_snapshot_borrows_and_copies_nothing() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    for i in 0..50 {
        write(&project, &format!("d{}/f{i}.txt", i % 5), &format!("{i}\n"));
    }
    let out = Command::new("git")
        .args(["-c", "user.name=U", "-c", "user.email=u@x", "init", "-q"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("git")
        .args(["add", "-A"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let git_before = tree_snapshot(&project.join(".git"));
    let repo =
        match SessionRepo::create_overlay(&layers(tmp.path()), &tmp.path().join("h.git"), &[]) {
            Ok(r) => r,
            Err(e) => {
                assert!(!required(), "{e}");
                eprintln!("skipped: {e}");
                return;
            }
        };
    let stats = repo.start_stats().unwrap();
    assert_eq!((stats.files, stats.borrowed), (50, 50));
    // The upper layer holds only the whiteout hiding `.git`.
    let upper: Vec<_> = fs::read_dir(tmp.path().join("session/upper"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(upper, [".git"]);
    git(
        repo.git_dir(),
        Path::new("/"),
        &["fsck", "--strict", "--no-progress"],
    );
    assert_eq!(tree_snapshot(&project.join(".git")), git_before);
}

/// The lower layer's walk: `.git` at any depth, excluded names and paths and names git
/// cannot store are hidden from the merged tree (whiteouts) and left out of the first
/// snapshot; a FIFO is left out but stays visible; symlinks and executables are kept
/// as such, in directories several levels deep.
#[test]
fn the_walk_hides_git_dirs_excluded_and_unstorable_paths_at_any_depth() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    write(&project, "top.txt", "top\n");
    write(&project, "a/b/c/deep.txt", "deep\n");
    write(&project, "a/b/c/.git/HEAD", "ref: refs/heads/main\n");
    write(&project, "a/b/sub/.git", "gitdir: elsewhere\n");
    write(&project, "a/b/sub/kept.txt", "kept\n");
    write(&project, "a/node_modules/x.js", "excluded by name\n");
    write(&project, "a/b/secret/key", "excluded by path\n");
    write(&project, "z/.GIT/hooks/pre-commit", "unstorable\n");
    write(&project, "run.sh", "#!/bin/sh\n");
    set_exec(&project, "run.sh", true);
    std::os::unix::fs::symlink("../top.txt", project.join("a/link")).unwrap();
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::FileTypeExt;
    let fifo =
        std::ffi::CString::new(project.join("a/b/pipe").into_os_string().into_vec()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let out = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ex: Vec<String> = ["node_modules", "a/b/secret"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let repo =
        match SessionRepo::create_overlay(&layers(tmp.path()), &tmp.path().join("h.git"), &ex) {
            Ok(r) => r,
            Err(e) => {
                assert!(!required(), "{e}");
                eprintln!("skipped: {e}");
                return;
            }
        };
    let m = repo.files().to_path_buf();
    for hidden in [
        ".git",
        "a/b/c/.git",
        "a/b/sub/.git",
        "a/node_modules",
        "a/b/secret",
        "z/.GIT",
    ] {
        assert!(
            fs::symlink_metadata(m.join(hidden)).is_err(),
            "{hidden} is visible"
        );
        assert!(project.join(hidden).exists(), "{hidden} left the project");
    }
    assert!(fs::symlink_metadata(m.join("a/b/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    let files = commit_files(&repo, "HEAD");
    let names: Vec<&str> = files.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "a/b/c/deep.txt",
            "a/b/sub/kept.txt",
            "a/link",
            "run.sh",
            "top.txt"
        ]
    );
    assert!(files["run.sh"].1);
    assert_eq!(files["a/link"].0, b"../top.txt");
    assert_eq!(
        commit_files(&repo, "HEAD"),
        merged_files(&repo, &["a/b/pipe"])
    );
}
