//! HostSandbox file operations on real files.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{symlink, PermissionsExt};

use safe_coder_sandbox::{BackendKind, HostSandbox, Sandbox, SandboxError, SandboxState};

fn sandbox() -> (tempfile::TempDir, HostSandbox) {
    let dir = tempfile::tempdir().unwrap();
    let sb = HostSandbox::new(BackendKind::Copy, dir.path().to_path_buf(), None).unwrap();
    (dir, sb)
}

#[tokio::test]
async fn write_read_stat_list() {
    let (dir, sb) = sandbox();
    sb.write_file("a/b/c.txt", b"hello").await.unwrap();
    assert_eq!(sb.read_file("a/b/c.txt").await.unwrap(), b"hello");
    let st = sb.stat("a/b/c.txt").await.unwrap().unwrap();
    assert_eq!((st.is_dir, st.size, st.executable), (false, 5, false));
    assert!(sb.stat("a/b").await.unwrap().unwrap().is_dir);
    assert_eq!(sb.stat("nope").await.unwrap(), None);
    assert_eq!(sb.stat("a/b/c.txt/x").await.unwrap(), None);
    let entries = sb.list_dir("a/b").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "c.txt");
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    assert!(matches!(
        sb.read_file("missing").await,
        Err(SandboxError::NotFound(_))
    ));
    assert!(matches!(
        sb.read_file("a").await,
        Err(SandboxError::IsDirectory(_))
    ));
    assert!(matches!(
        sb.write_file("a", b"x").await,
        Err(SandboxError::IsDirectory(_))
    ));
    assert_eq!(
        sb.host_workdir().unwrap(),
        std::fs::canonicalize(dir.path()).unwrap()
    );
}

#[tokio::test]
async fn write_keeps_executable_bit() {
    let (dir, sb) = sandbox();
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.write_file("run.sh", b"#!/bin/sh\necho hi\n")
        .await
        .unwrap();
    let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert!(sb.stat("run.sh").await.unwrap().unwrap().executable);
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
}

#[tokio::test]
async fn symlink_escapes_are_refused() {
    let (dir, sb) = sandbox();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s").unwrap();
    symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
    symlink(outside.path(), dir.path().join("outdir")).unwrap();
    assert!(matches!(
        sb.read_file("link").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert!(matches!(
        sb.write_file("link", b"x").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert!(matches!(
        sb.write_file("outdir/new", b"x").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert!(matches!(
        sb.read_file("../x").await,
        Err(SandboxError::OutsideRoot(_))
    ));
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret")).unwrap(),
        "s"
    );
    assert!(!outside.path().join("new").exists());
}

#[tokio::test]
async fn status_and_stop() {
    let (_dir, sb) = sandbox();
    let st = sb.status().await;
    assert_eq!(st.backend, "copy");
    assert_eq!(st.state, SandboxState::Running);
    sb.stop().await.unwrap();
    assert_eq!(sb.status().await.state, SandboxState::Stopped);
}

#[test]
fn new_refuses_missing_dir() {
    assert!(HostSandbox::new(
        BackendKind::Direct,
        "/nonexistent/safe-coder-x".into(),
        None
    )
    .is_err());
}
