#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

pub fn git_available() -> bool {
    Command::new("git")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Skips the test (returns early) when git is absent.
#[macro_export]
macro_rules! need_git {
    () => {
        if !common::git_available() {
            eprintln!("git is not installed: skipping");
            return;
        }
    };
}

pub fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

pub fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

pub fn set_exec(root: &Path, rel: &str, exec: bool) {
    let p = root.join(rel);
    let mode = if exec { 0o755 } else { 0o644 };
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn is_exec(root: &Path, rel: &str) -> bool {
    fs::metadata(root.join(rel)).unwrap().permissions().mode() & 0o100 != 0
}

/// Runs plain git (isolated from the user's config) in `git_dir`/`work_tree`.
pub fn git(git_dir: &Path, work_tree: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .env("GIT_DIR", git_dir)
        .env("GIT_WORK_TREE", work_tree)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .current_dir(work_tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` (relative path → bytes and mode), symlinks as their target.
pub fn tree_snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut map = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        let data = if meta.file_type().is_symlink() {
            fs::read_link(e.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
                .into_bytes()
        } else if meta.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        map.insert(rel, (data, meta.permissions().mode()));
    }
    map
}

/// A small project: sources, an executable script, a symlink, a nested dir, a `.git`.
pub fn sample_project(root: &Path) {
    write(
        root,
        "src/main.rs",
        "fn main() {\n    println!(\"hi\");\n}\n",
    );
    write(root, "src/lib.rs", "pub fn a() {}\n");
    write(root, "README.md", "# Demo\n\nline two\n");
    write(root, "run.sh", "#!/bin/sh\necho run\n");
    set_exec(root, "run.sh", true);
    write(root, "a/b/c/deep.txt", "deep\n");
    write(root, "a.txt", "sorting check\n");
    write(root, "empty.txt", "");
    write(root, "dup1.txt", "same\n");
    write(root, "dup2.txt", "same\n");
    write(root, "node_modules/pkg/index.js", "module.exports = 1;\n");
    write(root, "logs/x.log", "log\n");
    write(root, ".git/HEAD", "ref: refs/heads/master\n");
    write(root, ".git/config", "[core]\n");
    std::os::unix::fs::symlink("src/main.rs", root.join("link-to-main")).unwrap();
}
