#![allow(clippy::unwrap_used)]
//! The first snapshot of a git project borrows what the user's git knows (its index and
//! objects, read-only): the snapshot is the same as when every file is hashed, the
//! user's `.git` stays byte-identical, and a session built on borrowed blobs diffs and
//! syncs like any other.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use safe_coder_history::{sync, SessionRepo};

/// Plain git in the user's repository (as the user would run it).
fn user_git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=U", "-c", "user.email=u@x"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A committed repository, then made dirty: a modified file, a staged change, a
/// deletion, an untracked file, an ignored file and a mode change.
fn dirty_repo(root: &Path) {
    sample_project(root);
    fs::remove_dir_all(root.join(".git")).unwrap();
    write(root, ".gitignore", "*.log\n");
    user_git(root, &["init", "-q", "-b", "main"]);
    user_git(root, &["add", "-A"]);
    user_git(root, &["commit", "-q", "-m", "one"]);
    // Let the index be older than the edits below, so they are not "racily clean".
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(root, "src/main.rs", "fn main() { changed(); }\n");
    write(root, "src/lib.rs", "pub fn staged() {}\n");
    user_git(root, &["add", "src/lib.rs"]);
    write(root, "src/lib.rs", "pub fn staged_then_changed() {}\n");
    fs::remove_file(root.join("a.txt")).unwrap();
    write(root, "untracked/new.txt", "new\n");
    write(root, "logs/y.log", "ignored but copied\n");
    set_exec(root, "README.md", true);
}

/// Every file under `.git` with its bytes (the index included).
fn dot_git(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    tree_snapshot(&root.join(".git"))
}

/// `git fsck --strict` of the session's history: every object it holds is sound.
fn fsck(repo: &SessionRepo) {
    git(
        repo.git_dir(),
        repo.work_tree(),
        &["fsck", "--strict", "--no-progress"],
    );
}

fn base_tree(repo: &SessionRepo) -> String {
    let base = repo.base().unwrap();
    git(
        repo.git_dir(),
        repo.work_tree(),
        &["rev-parse", &format!("{base}^{{tree}}")],
    )
    .trim()
    .to_string()
}

#[test]
fn sandbox_copy_borrows_the_users_index_and_objects_and_leaves_git_untouched() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    dirty_repo(&project);
    let before = dot_git(&project);

    let borrowed = SessionRepo::create_sandbox_copy_with(
        &project,
        &tmp.path().join("s1/work"),
        Some(&tmp.path().join("s1/history.git")),
        &[],
        true,
    )
    .unwrap();
    let hashed = SessionRepo::create_sandbox_copy_with(
        &project,
        &tmp.path().join("s2/work"),
        Some(&tmp.path().join("s2/history.git")),
        &[],
        false,
    )
    .unwrap();
    let stats = borrowed.start_stats().unwrap();
    assert!(stats.borrowed >= 5, "{stats:?}");
    assert!(stats.borrowed < stats.files, "{stats:?}");
    assert_eq!(hashed.start_stats().unwrap().borrowed, 0);
    // The same snapshot either way: the dirty files were hashed, the rest borrowed.
    assert_eq!(base_tree(&borrowed), base_tree(&hashed));
    assert!(
        fs::read_to_string(borrowed.git_dir().join("objects/info/alternates"))
            .unwrap()
            .contains(".git/objects")
    );
    fsck(&borrowed);
    let status = git(
        borrowed.git_dir(),
        borrowed.work_tree(),
        &["status", "--porcelain"],
    );
    assert_eq!(status, "", "the copy matches its first snapshot");
    assert_eq!(
        read(borrowed.work_tree(), "src/lib.rs"),
        "pub fn staged_then_changed() {}\n"
    );

    // A session on borrowed blobs: change, review, sync back.
    let w = borrowed.work_tree().to_path_buf();
    write(&w, "src/main.rs", "fn main() { agent(); }\n");
    fs::remove_file(w.join("dup1.txt")).unwrap();
    borrowed
        .commit_changes("Agent executed: bash", None)
        .unwrap();
    let changes = borrowed.change_set().unwrap();
    let paths: Vec<&str> = changes.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["dup1.txt", "src/main.rs"]);
    assert!(borrowed.diff(Some("dup1.txt")).unwrap().contains("-same"));
    let report = sync::sync_back(&borrowed, &project, None).unwrap();
    assert_eq!(report.conflicts, Vec::<String>::new());
    assert_eq!(read(&project, "src/main.rs"), "fn main() { agent(); }\n");
    assert!(!project.join("dup1.txt").exists());

    // Only the accepted sync changed the project; `.git` never.
    assert_eq!(dot_git(&project), before, "the user's .git changed");
}

#[test]
fn shadow_borrows_and_leaves_git_untouched() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    dirty_repo(&project);
    let before = dot_git(&project);
    let borrowed =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("a.git"), &[], true).unwrap();
    let hashed =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("b.git"), &[], false).unwrap();
    assert!(borrowed.start_stats().unwrap().borrowed >= 5);
    assert_eq!(base_tree(&borrowed), base_tree(&hashed));
    fsck(&borrowed);
    write(&project, "src/main.rs", "fn main() { direct(); }\n");
    borrowed
        .commit_changes("Agent executed: bash", None)
        .unwrap();
    assert!(borrowed.undo().unwrap().is_some());
    assert_eq!(read(&project, "src/main.rs"), "fn main() { changed(); }\n");
    assert_eq!(dot_git(&project), before, "the user's .git changed");
}

#[test]
fn a_file_changed_behind_the_index_is_hashed_not_borrowed() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    write(&project, "a.txt", "aaaa\n");
    write(&project, "b.txt", "bbbb\n");
    user_git(&project, &["init", "-q"]);
    user_git(&project, &["add", "-A"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Same size, new bytes: the stat data (mtime, ctime) gives it away.
    write(&project, "a.txt", "AAAA\n");
    let repo = SessionRepo::create_sandbox_copy_with(
        &project,
        &tmp.path().join("work"),
        Some(&tmp.path().join("h.git")),
        &[],
        true,
    )
    .unwrap();
    assert_eq!(repo.start_stats().unwrap().borrowed, 1);
    let base = repo.base().unwrap();
    let shown = git(
        repo.git_dir(),
        repo.work_tree(),
        &["show", &format!("{base}:a.txt")],
    );
    assert_eq!(shown, "AAAA\n");
}

#[test]
fn a_project_below_the_repository_root_borrows_its_part() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("top");
    write(&top, "outside.txt", "o\n");
    write(&top, "sub/inside.txt", "i\n");
    write(&top, "sub/deeper/x.txt", "x\n");
    user_git(&top, &["init", "-q"]);
    user_git(&top, &["add", "-A"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = dot_git(&top);
    let repo = SessionRepo::create_sandbox_copy_with(
        &top.join("sub"),
        &tmp.path().join("work"),
        Some(&tmp.path().join("h.git")),
        &[],
        true,
    )
    .unwrap();
    assert_eq!(repo.start_stats().unwrap().borrowed, 2);
    let files = git(repo.git_dir(), repo.work_tree(), &["ls-files"]);
    assert_eq!(files, "deeper/x.txt\ninside.txt\n");
    fsck(&repo);
    assert_eq!(dot_git(&top), before);
}

#[test]
fn index_versions_3_and_4_are_read() {
    need_git!();
    for version in ["3", "4"] {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("project");
        for i in 0..40 {
            write(
                &project,
                &format!("dir{}/file{i}.txt", i % 4),
                &format!("{i}\n"),
            );
        }
        user_git(&project, &["init", "-q"]);
        user_git(&project, &["add", "-A"]);
        // Intent-to-add sets an extended flag (version 3 at least).
        write(&project, "later.txt", "later\n");
        user_git(&project, &["add", "-N", "later.txt"]);
        user_git(&project, &["update-index", "--index-version", version]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let repo = SessionRepo::create_sandbox_copy_with(
            &project,
            &tmp.path().join("work"),
            Some(&tmp.path().join("h.git")),
            &[],
            true,
        )
        .unwrap();
        let stats = repo.start_stats().unwrap();
        assert_eq!((stats.files, stats.borrowed), (41, 40), "index v{version}");
        fsck(&repo);
        let shown = git(
            repo.git_dir(),
            repo.work_tree(),
            &["show", "HEAD:later.txt"],
        );
        assert_eq!(shown, "later\n");
    }
}

#[test]
fn a_large_project_stats_on_several_threads_into_the_same_snapshot() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    // Past the size at which `direct` and the walk split the stat work between threads.
    for i in 0..3000 {
        write(
            &project,
            &format!("d{:02}/s{}/f{i}.txt", i % 40, i % 3),
            &format!("file {i}\n"),
        );
    }
    set_exec(&project, "d07/s1/f7.txt", true);
    std::os::unix::fs::symlink("../d00/s0/f0.txt", project.join("d01/link")).unwrap();
    user_git(&project, &["init", "-q", "-b", "main"]);
    user_git(&project, &["add", "-A"]);
    user_git(&project, &["commit", "-q", "-m", "one"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&project, "d05/s2/f5.txt", "changed\n");
    write(&project, "d39/new.txt", "untracked\n");
    let before = dot_git(&project);
    let shadow =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("a.git"), &[], true).unwrap();
    let hashed = SessionRepo::create_sandbox_copy_with(
        &project,
        &tmp.path().join("copy/work"),
        Some(&tmp.path().join("copy/history.git")),
        &[],
        false,
    )
    .unwrap();
    let st = shadow.start_stats().unwrap();
    assert_eq!(st.files, 3001);
    assert_eq!(st.borrowed, 2999);
    assert_eq!(base_tree(&shadow), base_tree(&hashed));
    fsck(&shadow);
    assert_eq!(dot_git(&project), before, "the user's .git changed");
}

/// `direct` stats the files of the user's index while git lists the project, then keeps
/// only what git listed: a tracked file that is now ignored, deleted, replaced by a
/// directory or by a symlink ends up in the snapshot exactly as when git's list alone
/// is stat'ed (no index borrowed).
#[test]
fn shadow_keeps_what_git_lists_not_what_the_index_names() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    dirty_repo(&project);
    write(&project, "forced.log", "tracked although ignored\n");
    write(&project, "became_dir", "a file first\n");
    write(&project, "became_link", "a file first\n");
    user_git(
        &project,
        &["add", "-f", "forced.log", "became_dir", "became_link"],
    );
    user_git(&project, &["commit", "-q", "-m", "two"]);
    fs::remove_file(project.join("became_dir")).unwrap();
    write(&project, "became_dir/inside.txt", "now a directory\n");
    fs::remove_file(project.join("became_link")).unwrap();
    std::os::unix::fs::symlink("README.md", project.join("became_link")).unwrap();
    let before = dot_git(&project);
    let borrowed =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("a.git"), &[], true).unwrap();
    let hashed =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("b.git"), &[], false).unwrap();
    assert!(borrowed.start_stats().unwrap().borrowed >= 3);
    assert_eq!(base_tree(&borrowed), base_tree(&hashed));
    let base = borrowed.base().unwrap();
    let listed = git(
        borrowed.git_dir(),
        borrowed.work_tree(),
        &["ls-tree", "-r", "--name-only", &base],
    );
    let names: Vec<&str> = listed.lines().collect();
    assert!(!names.contains(&"forced.log"), "{names:?}");
    assert!(!names.contains(&"a.txt"), "{names:?}");
    assert!(names.contains(&"became_dir/inside.txt"), "{names:?}");
    assert!(names.contains(&"became_link"), "{names:?}");
    assert!(names.contains(&"untracked/new.txt"), "{names:?}");
    let mode = git(
        borrowed.git_dir(),
        borrowed.work_tree(),
        &["ls-tree", &base, "became_link"],
    );
    assert!(mode.starts_with("120000"), "{mode}");
    assert_eq!(dot_git(&project), before, "the user's .git changed");
}

/// The same with thousands of tracked files, so that the user's index is stat'ed on
/// several threads in runs and merged with git's listing: tracked files that are now
/// ignored, deleted, replaced by a directory or a symlink, made executable, modified,
/// or inside a directory that became a repository of its own, at the start, the end
/// and around the runs' boundaries of the index's order, plus untracked files in
/// between. The snapshot is the one made from git's listing alone.
#[test]
fn shadow_merges_a_large_index_with_gits_listing() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let name = |i: usize| format!("d{:02}/f{i:04}.txt", i / 100);
    for i in 0..4000 {
        write(&project, &name(i), &format!("file {i}\n"));
    }
    user_git(&project, &["init", "-q", "-b", "main"]);
    user_git(&project, &["add", "-A"]);
    user_git(&project, &["commit", "-q", "-m", "one"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Around the start, the end and the quarters of the index (4 runs of 1,000).
    let marks = [
        0, 1, 999, 1000, 1001, 1999, 2000, 2999, 3000, 3001, 3998, 3999,
    ];
    let mut ignores = String::new();
    for (k, &i) in marks.iter().enumerate() {
        let rel = name(i);
        match k % 6 {
            0 => ignores.push_str(&format!("/{rel}\n")),
            1 => fs::remove_file(project.join(&rel)).unwrap(),
            2 => {
                fs::remove_file(project.join(&rel)).unwrap();
                write(&project, &format!("{rel}/inside.txt"), "now a directory\n");
            }
            3 => {
                fs::remove_file(project.join(&rel)).unwrap();
                std::os::unix::fs::symlink("elsewhere", project.join(&rel)).unwrap();
            }
            4 => set_exec(&project, &rel, true),
            _ => write(&project, &rel, "modified\n"),
        }
        write(&project, &format!("{rel}.new"), "untracked\n");
    }
    write(&project, ".gitignore", &ignores);
    // d25 becomes a repository of its own: its files leave the snapshot.
    user_git(&project.join("d25"), &["init", "-q"]);
    let before = dot_git(&project);
    let borrowed =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("a.git"), &[], true).unwrap();
    let hashed =
        SessionRepo::create_shadow_with(&project, &tmp.path().join("b.git"), &[], false).unwrap();
    let st = borrowed.start_stats().unwrap();
    assert!(st.borrowed > 3800, "{st:?}");
    assert_eq!(base_tree(&borrowed), base_tree(&hashed));
    let base = borrowed.base().unwrap();
    let listed = git(
        borrowed.git_dir(),
        borrowed.work_tree(),
        &["ls-tree", "-r", "--name-only", &base],
    );
    let names: Vec<&str> = listed.lines().collect();
    assert!(!names.contains(&name(0).as_str()), "ignored");
    assert!(!names.contains(&name(1).as_str()), "deleted");
    assert!(names.contains(&format!("{}/inside.txt", name(999)).as_str()));
    assert!(names.contains(&name(1000).as_str()), "the symlink");
    assert!(names.contains(&format!("{}.new", name(3999)).as_str()));
    assert!(
        !names.iter().any(|n| n.starts_with("d25/")),
        "nested repository"
    );
    assert!(names.contains(&name(2400).as_str()));
    fsck(&borrowed);
    assert_eq!(dot_git(&project), before, "the user's .git changed");
}

/// The overlay's walk and the copy's find the files in no order: they are put in path
/// order and merged with the user's index in one pass. Names whose order differs
/// between a directory's listing and whole paths (`x-y` < `x/y` < `x.y`… in bytes),
/// modified, deleted, re-moded and untracked files: exactly the unchanged tracked files
/// are borrowed, and the snapshot is the one made by hashing every file.
#[test]
fn a_walked_project_is_matched_with_the_index_in_path_order() {
    need_git!();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let mut tracked: Vec<String> = (0..300).map(|i| format!("d{}/f{i}.txt", i % 7)).collect();
    for odd in [
        "x-y.txt",
        "x/y.txt",
        "x.y",
        "x0",
        "x/z/w.txt",
        "x/y-z.txt",
        "x/y/a",
        "x/y.",
        "d1-",
        "d1.txt",
        "d10/a",
        "e",
    ] {
        tracked.push(odd.to_string());
    }
    for (i, rel) in tracked.iter().enumerate() {
        write(&project, rel, &format!("{rel} {}\n", i % 11));
    }
    user_git(&project, &["init", "-q", "-b", "main"]);
    user_git(&project, &["add", "-A"]);
    user_git(&project, &["commit", "-q", "-m", "one"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let changed = ["x/y.txt", "d1-", "d0/f0.txt", "d5/f299.txt", "e"];
    for rel in changed {
        write(&project, rel, "modified\n");
    }
    let deleted = ["x-y.txt", "d3/f10.txt", "x/y/a"];
    for rel in deleted {
        fs::remove_file(project.join(rel)).unwrap();
    }
    set_exec(&project, "x.y", true);
    for rel in ["x/y.new", "d1/aaa", "x-a", "zz/new.txt", "d10/b"] {
        write(&project, rel, "untracked\n");
    }
    let before = dot_git(&project);
    let expected_borrowed = tracked.len() - changed.len() - deleted.len() - 1;
    let files = tracked.len() - deleted.len() + 5;

    let hashed = SessionRepo::create_sandbox_copy_with(
        &project,
        &tmp.path().join("h/work"),
        Some(&tmp.path().join("h/history.git")),
        &[],
        false,
    )
    .unwrap();
    let copy = SessionRepo::create_sandbox_copy_with(
        &project,
        &tmp.path().join("c/work"),
        Some(&tmp.path().join("c/history.git")),
        &[],
        true,
    )
    .unwrap();
    let st = copy.start_stats().unwrap();
    assert_eq!(
        (st.files, st.borrowed),
        (files, expected_borrowed),
        "{st:?}"
    );
    assert_eq!(base_tree(&copy), base_tree(&hashed));

    let layers = safe_coder_sandbox::overlay::Layers {
        lower: project.clone(),
        upper: tmp.path().join("o/upper"),
        work: tmp.path().join("o/ovl-work"),
        merged: tmp.path().join("o/work"),
    };
    match SessionRepo::create_overlay(&layers, &tmp.path().join("o/history.git"), &[]) {
        Ok(overlay) => {
            let st = overlay.start_stats().unwrap();
            assert_eq!(
                (st.files, st.borrowed),
                (files, expected_borrowed),
                "{st:?}"
            );
            assert_eq!(base_tree(&overlay), base_tree(&hashed));
            git(
                overlay.git_dir(),
                Path::new("/"),
                &["fsck", "--strict", "--no-progress"],
            );
        }
        Err(e) => {
            assert!(
                std::env::var_os("SAFE_CODER_REQUIRE_SANDBOX").is_none(),
                "the overlay workspace must work here: {e}"
            );
            eprintln!("overlay part skipped: {e}");
        }
    }
    assert_eq!(dot_git(&project), before, "the user's .git changed");
}
