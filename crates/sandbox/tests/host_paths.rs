//! `resolve_in_root`: `..`, absolute paths and symlinks never lead outside the root.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;

use safe_coder_sandbox::{resolve_in_root, SandboxError};

fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("src/deep")).unwrap();
    std::fs::write(root.path().join("src/a.rs"), "a").unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    (root, outside)
}

fn outside_root(r: Result<std::path::PathBuf, SandboxError>) -> bool {
    matches!(r, Err(SandboxError::OutsideRoot(_)))
}

#[test]
fn plain_and_new_paths_resolve_inside() {
    let (root, _outside) = setup();
    let canon = std::fs::canonicalize(root.path()).unwrap();
    assert_eq!(
        resolve_in_root(root.path(), "src/a.rs").unwrap(),
        canon.join("src/a.rs")
    );
    assert_eq!(
        resolve_in_root(root.path(), "src/new/dir/file.txt").unwrap(),
        canon.join("src/new/dir/file.txt")
    );
    assert_eq!(resolve_in_root(root.path(), ".").unwrap(), canon);
    assert_eq!(
        resolve_in_root(root.path(), "src/deep/../a.rs").unwrap(),
        canon.join("src/a.rs")
    );
    let abs = canon.join("src/a.rs");
    assert_eq!(
        resolve_in_root(root.path(), abs.to_str().unwrap()).unwrap(),
        abs
    );
}

#[test]
fn dotdot_and_absolute_outside_are_refused() {
    let (root, outside) = setup();
    assert!(outside_root(resolve_in_root(root.path(), "../x")));
    assert!(outside_root(resolve_in_root(root.path(), "src/../../x")));
    assert!(outside_root(resolve_in_root(root.path(), "/etc/passwd")));
    let secret = outside.path().join("secret");
    assert!(outside_root(resolve_in_root(
        root.path(),
        secret.to_str().unwrap()
    )));
}

#[test]
fn symlinks_out_are_refused() {
    let (root, outside) = setup();
    // A file symlink pointing outside (final component).
    symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
    assert!(outside_root(resolve_in_root(root.path(), "link")));
    // A directory symlink in the middle of the path, for an existing and a new file.
    symlink(outside.path(), root.path().join("src/out")).unwrap();
    assert!(outside_root(resolve_in_root(root.path(), "src/out/secret")));
    assert!(outside_root(resolve_in_root(
        root.path(),
        "src/out/new.txt"
    )));
    // A dangling symlink whose target is outside: writing through it would create it there.
    symlink(outside.path().join("not-yet"), root.path().join("dangling")).unwrap();
    assert!(outside_root(resolve_in_root(root.path(), "dangling")));
    // A relative symlink climbing out.
    symlink("../../..", root.path().join("src/deep/up")).unwrap();
    assert!(outside_root(resolve_in_root(
        root.path(),
        "src/deep/up/etc/passwd"
    )));
}

#[test]
fn symlinks_inside_are_followed() {
    let (root, _outside) = setup();
    let canon = std::fs::canonicalize(root.path()).unwrap();
    symlink("src/a.rs", root.path().join("alias")).unwrap();
    assert_eq!(
        resolve_in_root(root.path(), "alias").unwrap(),
        canon.join("src/a.rs")
    );
    symlink("deep", root.path().join("src/d")).unwrap();
    assert_eq!(
        resolve_in_root(root.path(), "src/d/new.txt").unwrap(),
        canon.join("src/deep/new.txt")
    );
    // A loop is an error, not a hang.
    symlink("loop2", root.path().join("loop1")).unwrap();
    symlink("loop1", root.path().join("loop2")).unwrap();
    assert!(resolve_in_root(root.path(), "loop1").is_err());
}
